"""Thin nn.Modules that express each exported graph with the DiT's own pieces (embed_tokens,
condition, l_embedder, blocks[i].modulation / apply_modulated, final.modulation / apply_modulated).
They hold references to the model's modules, never copies, and run only the blocks a graph needs:
dead blocks are never called, so the tracer never sees their weights.

With `guided` (classifier-free guidance folded in, like DiT's forward_with_cfg) the caller passes
B rows; the graphs run 2B rows internally: B conditional rows, then B null-class rows.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from odelt.models.dit import DiT, DiTBlock


def with_null_rows(y: Tensor, null_class: int) -> Tensor:
    """(B,) labels -> (2B,): the labels, then the null class."""
    return torch.cat([y, torch.full_like(y, null_class)])


def twice(z: Tensor) -> Tensor:
    return torch.cat([z, z])


def guide(out: Tensor, guidance_scale: Tensor) -> Tensor:
    """(2B, ...) cond rows then null rows -> (B, ...): uncond + s * (cond - uncond)."""
    cond, uncond = out.chunk(2)
    return uncond + guidance_scale.reshape(-1, *([1] * (out.ndim - 1))) * (cond - uncond)


def unpatchify(tokens: Tensor, patch: int, channels: int, grid: int) -> Tensor:
    """(B, N, p*p*C) -> (B, C, H, W), as DiT.unpatchify, with reshape/transpose only.

    DiT.unpatchify uses einsum and reads the grid from a shape (which the tracer turns into a
    tensor); reshape + Transpose is what every TensorRT version parses.
    """
    b = tokens.shape[0]
    x = tokens.reshape(b, grid, grid, patch, patch, channels)      # (B, h, w, p, q, C)
    x = x.permute(0, 5, 1, 3, 2, 4)                                # (B, C, h, p, w, q)
    return x.reshape(b, channels, grid * patch, grid * patch)


def block(dit: DiT, i: int) -> DiTBlock:
    blk = dit.blocks[i]
    assert isinstance(blk, DiTBlock)
    return blk


def run_blocks(dit: DiT, blocks: range, h: Tensor, v: Tensor | None, mods: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The group recurrence over `blocks` with precomputed modulations; returns (h, V).

    Inside a group h <- B(h); at a group end v = B(h), h <- h + v, V <- V + v (V starts at zero,
    so the first group end sets it).
    """
    g = dit.config.depth_group
    for i, mod in zip(blocks, mods):
        out = block(dit, i).apply_modulated(h, mod)                  # (R, N, D)
        if i % g != g - 1:
            h = out
        else:
            h, v = h + out, (out if v is None else v + out)
    assert v is not None, "a chunk must end at a group end"
    return h, v


class ConditioningGraph(nn.Module):
    """(t, dt_base, y, l) -> (mod0, ..., mod{k-1}, final_mod): every adaLN output of a step."""

    dit: DiT

    def __init__(self, dit: DiT, num_blocks: int, guided: bool):
        super().__init__()
        self.dit, self.num_blocks, self.guided = dit, num_blocks, guided

    def forward(self, t: Tensor, dt_base: Tensor, y: Tensor, l: Tensor) -> tuple[Tensor, ...]:
        if self.guided:
            t, dt_base, l = twice(t), twice(dt_base), twice(l)
            y = with_null_rows(y, self.dit.config.num_classes)
        c = self.dit.condition(t, dt_base, y)                           # (R, D)
        cb = c + self.dit.l_embedder(l.long())                          # (R, D)
        mods = [block(self.dit, i).modulation(cb) for i in range(self.num_blocks)]  # each (R, 6D)
        return (*mods, self.dit.final.modulation(c))                   # final: (R, 2D)


class ChunkGraph(nn.Module):
    """(x | h, V, mod_i for i in blocks) -> (h_out, V_out). The first chunk embeds x itself."""

    dit: DiT

    def __init__(self, dit: DiT, blocks: tuple[int, ...], guided: bool):
        super().__init__()
        self.dit, self.blocks, self.guided = dit, range(blocks[0], blocks[-1] + 1), guided

    def forward(self, *args: Tensor) -> tuple[Tensor, Tensor]:
        if self.blocks.start == 0:
            x, mods = args[0], list(args[1:])
            h = self.dit.embed_tokens(twice(x) if self.guided else x)  # (R, N, D)
            return run_blocks(self.dit, self.blocks, h, None, mods)
        h, v, mods = args[0], args[1], list(args[2:])
        return run_blocks(self.dit, self.blocks, h, v, mods)


def final_on_zero_v(dit: DiT, final_mod: Tensor) -> Tensor:
    """The final layer at V = 0 (no live block), as image (R, C, H, W), without a zero tensor.

    LayerNorm of a zero row is exactly zero (mean 0, variance 0, eps > 0), so modulate gives the
    shift for every token, and every token's patch is linear(shift): one (R, D) product, repeated
    over the token grid. DiT.forward computes the same numbers the long way round."""
    cfg = dit.config
    shift = final_mod[:, :cfg.hidden_size]                             # (R, D)
    patch = dit.final.linear(shift)                                     # (R, p*p*C)
    tokens = patch.unsqueeze(1).repeat(1, cfg.num_tokens, 1)            # (R, N, p*p*C)
    return unpatchify(tokens, cfg.patch_size, cfg.out_channels, cfg.input_size // cfg.patch_size)


def final_image(dit: DiT, v: Tensor | None, final_mod: Tensor) -> Tensor:
    """The final layer on the velocity sum V (None: no block ran, V = 0) -> (R, C, H, W)."""
    cfg = dit.config
    if v is None:
        return final_on_zero_v(dit, final_mod)
    return unpatchify(dit.final.apply_modulated(v, final_mod), cfg.patch_size, cfg.out_channels,
                      cfg.input_size // cfg.patch_size)


class HeadGraph(nn.Module):
    """(V, final_mod[, cfg_scale]) -> velocity (B, C, H, W); with `zero_v` (the head0 exit of
    lengths with no live block) there is no V input: (final_mod[, cfg_scale]) -> velocity."""

    dit: DiT

    def __init__(self, dit: DiT, guided: bool, zero_v: bool = False):
        super().__init__()
        self.dit, self.guided, self.zero_v = dit, guided, zero_v

    def forward(self, *args: Tensor) -> Tensor:
        v, rest = (None, args) if self.zero_v else (args[0], args[1:])
        final_mod, guidance_scale = rest[0], (rest[1] if len(rest) > 1 else None)
        out = final_image(self.dit, v, final_mod)                      # (R, C, H, W)
        return guide(out, guidance_scale) if guidance_scale is not None else out


class LengthGraph(nn.Module):
    """(x, t, dt_base, y[, cfg_scale]) -> velocity at one length, l folded in as a constant. Below
    the first group end no block is live: x is then an input nothing reads (the velocity is the final
    layer on V = 0)."""

    dit: DiT

    l_emb: Tensor

    def __init__(self, dit: DiT, length: int, guided: bool):
        super().__init__()
        self.dit, self.guided = dit, guided
        self.blocks = range(dit.config.live_depth(length))
        # Only row l of the length table is a constant of this graph, not the whole table.
        self.register_buffer("l_emb", dit.l_embedder.weight[length].detach().clone(), persistent=False)

    def forward(self, x: Tensor, t: Tensor, dt_base: Tensor, y: Tensor,
                guidance_scale: Tensor | None = None) -> Tensor:
        dit, cfg = self.dit, self.dit.config
        if self.guided:
            x, t, dt_base, y = twice(x), twice(t), twice(dt_base), with_null_rows(y, cfg.num_classes)
        c = dit.condition(t, dt_base, y)                                # (R, D)
        v = None
        if self.blocks:
            cb = c + self.l_emb                                         # (R, D)
            mods = [block(dit, i).modulation(cb) for i in self.blocks]
            _, v = run_blocks(dit, self.blocks, dit.embed_tokens(x), None, mods)  # (R, N, D)
        out = final_image(dit, v, dit.final.modulation(c))
        return guide(out, guidance_scale) if guidance_scale is not None else out


def reference_velocity(dit: DiT, x: Tensor, t: Tensor, dt_base: Tensor, y: Tensor, length: int,
                       guidance_scale: Tensor | None = None) -> Tensor:
    """PyTorch reference for a bundle's output: DiT.forward, with CFG as two separate calls."""
    with torch.no_grad():
        cond = dit(x, t, dt_base, y, length)
        if guidance_scale is None:
            return cond
        uncond = dit(x, t, dt_base, torch.full_like(y, dit.config.num_classes), length)
        return uncond + guidance_scale.reshape(-1, 1, 1, 1) * (cond - uncond)
