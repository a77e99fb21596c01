"""The length-rewired DiT of ODE_t(ODE_l) (Gudovskiy et al., arXiv:2506.21714), in PyTorch.

Upstream semantics, kept exactly (see research notes odelt.md §1):
  * t is embedded without x1000; dt_base (log2 #steps) has its own sinusoidal MLP;
  * c = te + ye + dte conditions the final layer; cb = c + E_l[l] conditions every block;
  * blocks are adaLN DiT blocks with separate K/Q/V, q scaled by 1/head_dim (not 1/sqrt),
    tanh GELU, affine-free LayerNorm (eps 1e-6), unclipped modulation;
  * the group recurrence: inside a group blocks chain h <- B(h); at a group end v = B(h),
    the next state is h + v and the velocity accumulates V += v; the final layer reads V.
The block's adaLN modulation is a separate method so that exporters can hoist it out of the
token path: it depends only on (t, dt_base, y, l).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from odelt.models.config import DiTConfig


def sincos_pos_embed(dim: int, grid: int) -> np.ndarray:
    """Fixed 2-D sin-cos positions (N, dim); first half from the column coordinate (MAE/DiT)."""
    coords = np.arange(grid, dtype=np.float64)
    cols, rows = np.meshgrid(coords, coords)  # cols varies along w; tokens are row-major (h, w)
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))

    def embed_1d(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("n,d->nd", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([embed_1d(cols), embed_1d(rows)], axis=1).astype(np.float32)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    # Unclipped: upstream's model.py shadows the clipping version from math_utils.
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Scalar -> sinusoidal features [cos, sin] -> MLP. Used for t in [0,1] and for dt_base."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]                       # (B, half)
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))  # (B, D)


class Attention(nn.Module):
    """Multi-head self-attention with upstream's separate K/Q/V and 1/head_dim query scale."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.k, self.q, self.v = (nn.Linear(hidden, hidden) for _ in range(3))
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        split = lambda z: z.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))   # (B, H, N, hd)
        q = q / (d // self.heads)                                       # 1/head_dim, upstream's quirk
        attn = torch.softmax(q @ k.transpose(-1, -2), dim=-1)          # (B, H, N, N)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class DiTBlock(nn.Module):
    """adaLN DiT block that returns the full residual output x + ... (not a delta)."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        width = int(hidden * mlp_ratio)
        self.fc1, self.fc2 = nn.Linear(hidden, width), nn.Linear(width, hidden)
        self.adaLN = nn.Linear(hidden, 6 * hidden)

    def modulation(self, cb: Tensor) -> Tensor:
        """(B, D) conditioning -> (B, 6D): shift/scale/gate for attention, then for the MLP."""
        return self.adaLN(F.silu(cb))

    def apply_modulated(self, x: Tensor, mod: Tensor) -> Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod.chunk(6, dim=-1)  # each (B, D)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm(x), shift_a, scale_a))
        h = F.gelu(self.fc1(modulate(self.norm(x), shift_m, scale_m)), approximate="tanh")
        return x + gate_m.unsqueeze(1) * self.fc2(h)                   # (B, N, D)

    def forward(self, x: Tensor, cb: Tensor) -> Tensor:
        return self.apply_modulated(x, self.modulation(cb))


class FinalLayer(nn.Module):
    """adaLN on c (no length embedding) -> LayerNorm -> modulate -> Linear to patch pixels."""

    def __init__(self, hidden: int, patch: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.adaLN = nn.Linear(hidden, 2 * hidden)
        self.linear = nn.Linear(hidden, patch * patch * out_channels)

    def modulation(self, c: Tensor) -> Tensor:
        return self.adaLN(F.silu(c))                                   # (B, 2D): shift, scale

    def apply_modulated(self, x: Tensor, mod: Tensor) -> Tensor:
        shift, scale = mod.chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))       # (B, N, p*p*C)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return self.apply_modulated(x, self.modulation(c))


class DiT(nn.Module):
    """forward(x, t, dt_base, y, length) -> velocity x1 - x0, all NCHW float32."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        h, p = cfg.hidden_size, cfg.patch_size
        self.x_embedder = nn.Conv2d(cfg.in_channels, h, kernel_size=p, stride=p)
        self.t_embedder = TimestepEmbedder(h, cfg.frequency_embedding_size)
        self.dt_embedder = TimestepEmbedder(h, cfg.frequency_embedding_size)
        self.y_embedder = nn.Embedding(cfg.num_classes + 1, h)      # last row = null class
        self.l_embedder = nn.Embedding(cfg.depth + 1, h)            # indexed by l itself
        self.blocks = nn.ModuleList(DiTBlock(h, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final = FinalLayer(h, p, cfg.out_channels)
        pos = sincos_pos_embed(h, cfg.input_size // p)
        self.register_buffer("pos_embed", torch.from_numpy(pos)[None], persistent=False)  # (1, N, D)
        self._init_weights()

    def _init_weights(self) -> None:
        # Upstream's Flax init: xavier-uniform Dense kernels (block adaLN included), zero biases,
        # N(0, 0.02) embeddings, zero-init final layer. Only matters for training from scratch.
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        for m in (self.final.adaLN, self.final.linear):
            nn.init.zeros_(m.weight)

    # -- pieces, also used by the exporter ------------------------------------------------------
    def embed_tokens(self, x: Tensor) -> Tensor:
        return self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D)

    def condition(self, t: Tensor, dt_base: Tensor, y: Tensor) -> Tensor:
        """c = te + ye + dte, shape (B, D)."""
        if self.config.ignore_dt:
            dt_base = torch.zeros_like(t)
        return self.t_embedder(t) + self.y_embedder(y.long()) + self.dt_embedder(dt_base.float())

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, N, p*p*C) -> (B, C, H, W); feature (i*p + j)*C + c is pixel (h*p + i, w*p + j)."""
        p, c = self.config.patch_size, self.config.out_channels
        n = int(round(x.shape[1] ** 0.5))
        x = x.reshape(x.shape[0], n, n, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(x.shape[0], c, n * p, n * p)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: Tensor, t: Tensor, dt_base: Tensor, y: Tensor, length: int | Tensor) -> Tensor:
        cfg = self.config
        b = x.shape[0]
        per_sample = isinstance(length, Tensor) and length.ndim > 0
        if per_sample:
            lengths = length.to(device=x.device, dtype=torch.long)      # (B,)
            if lengths.min() < 1 or lengths.max() > cfg.depth:
                cfg.check_length(int(lengths.min() if lengths.min() < 1 else lengths.max()))
            live = cfg.live_depth(int(lengths.max()))
        else:
            live = cfg.live_depth(int(length))
            lengths = torch.full((b,), int(length), dtype=torch.long, device=x.device)
        c = self.condition(t, dt_base, y)                               # (B, D)
        cb = c + self.l_embedder(lengths)                               # (B, D)
        h = self.embed_tokens(x)                                        # (B, N, D)
        v_sum = torch.zeros_like(h)
        g = cfg.depth_group
        for i in range(live):                                          # blocks >= live are dead
            out = self.blocks[i](h, cb)
            if i % g != g - 1:
                h = out                                                 # in-group chaining
                continue
            if per_sample:                                              # upstream's masked path
                out = out * (i < lengths).to(out.dtype)[:, None, None]
            h, v_sum = h + out, v_sum + out                            # group end
        return self.unpatchify(self.final(v_sum, c))                   # (B, C, H, W)

    def param_bytes(self, length: int | None = None) -> int:
        """Parameter bytes of the model that serves `length` (only its live blocks), or all of it."""
        live = self.config.depth if length is None else self.config.live_depth(length)
        dead = {id(p) for blk in self.blocks[live:] for p in blk.parameters()}
        return sum(p.numel() * p.element_size() for p in self.parameters() if id(p) not in dead)
