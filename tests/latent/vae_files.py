"""Tiny random VAEs and the files the decoder stage reads, written here the way diffusers and flax
write them: a diffusers folder (config.json + safetensors), a lone safetensors file in either
attention spelling, and a Flax msgpack tree (nested maps, ndarray leaves as extension type 1)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

# block_out_channels (8, 16), norm groups 4: a 2x upscale and the SD structure (mid-block attention,
# GroupNorms, conv_shortcut, an upsampler) in ~26 k decode parameters.
KL_CONFIG = {"block_out_channels": [8, 16], "down_block_types": ["DownEncoderBlock2D"] * 2,
             "up_block_types": ["UpDecoderBlock2D"] * 2, "norm_num_groups": 4, "layers_per_block": 1,
             "latent_channels": 4, "in_channels": 3, "out_channels": 3}
TINY_CONFIG = {"encoder_block_out_channels": [8, 8], "decoder_block_out_channels": [8, 8],
               "num_encoder_blocks": [1, 1], "num_decoder_blocks": [2, 1], "latent_channels": 4}
LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def random_vae(kind: str = "sd", seed: int = 0, **config):
    """A diffusers VAE with every parameter moved off its init (norm gains and biases too)."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    torch.manual_seed(seed)
    cls, base = (AutoencoderKL, KL_CONFIG) if kind == "sd" else (AutoencoderTiny, TINY_CONFIG)
    model = cls(**{**base, **config}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def save_folder(model, folder: Path) -> Path:
    """config.json + diffusion_pytorch_model.safetensors, as diffusers' save_pretrained writes them."""
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def legacy_state(model) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in model.state_dict().items():
        for new, old in LEGACY.items():
            k = re.sub(rf"(\.attentions\.\d+\.){re.escape(new)}\.", rf"\g<1>{old}.", k)
        out[k] = v.contiguous()
    return out


def save_file(state: dict[str, torch.Tensor], path: Path, config: dict | None = None) -> Path:
    from safetensors.torch import save_file as save

    path.parent.mkdir(parents=True, exist_ok=True)
    save({k: v.contiguous() for k, v in state.items()}, str(path))
    if config is not None:
        (path.parent / "config.json").write_text(json.dumps(config))
    return path


def _flax_tree(model) -> dict:
    """The params tree diffusers' Flax VAE has: `_N` list indices, HWIO conv kernels, (in, out)
    Dense kernels, norm `scale`, legacy attention names."""
    tree: dict = {}
    for name, t in legacy_state(model).items():
        *mods, leaf = name.split(".")
        parts, i = [], 0
        while i < len(mods):                            # 'up_blocks', '0' -> 'up_blocks_0'
            if i + 1 < len(mods) and mods[i + 1].isdigit():
                parts.append(f"{mods[i]}_{mods[i + 1]}")
                i += 2
            else:
                parts.append(mods[i])
                i += 1
        a = t.numpy()
        if leaf == "weight":
            if a.ndim == 4:
                leaf, a = "kernel", a.transpose(2, 3, 1, 0)
            elif a.ndim == 2:
                leaf, a = "kernel", a.T
            else:
                leaf = "scale"
        node = tree
        for p in parts:
            node = node.setdefault(p, {})
        node[leaf] = np.ascontiguousarray(a)
    return tree


def ndarray_ext(a: np.ndarray, dtype: str | None = None):
    import msgpack

    name = dtype or a.dtype.name
    return msgpack.ExtType(1, msgpack.packb((list(a.shape), name, a.tobytes()), use_bin_type=True))


def pack(tree, wrap_params: bool = False) -> bytes:
    """flax.serialization.to_bytes' layout: maps, and each array as extension type 1."""
    import msgpack

    def conv(node):
        if isinstance(node, dict):
            return {k: conv(v) for k, v in node.items()}
        return ndarray_ext(node) if isinstance(node, np.ndarray) else node

    return msgpack.packb(conv({"params": tree} if wrap_params else tree), use_bin_type=True)


def save_msgpack(model, path: Path, config: dict | None = None, wrap_params: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pack(_flax_tree(model), wrap_params))
    if config is not None:
        (path.parent / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **config}))
    return path


def export_latent_bundle(root: Path, kinds: tuple[str, ...] = ("sd", "taesd"), dit_config: str = "tiny-latent",
                         **options):
    """A tiny latent DiT (4x8x8) with decoder stages of `kinds`, exported to root/'bundle' (the
    checkpoint and VAE folders are written beside it). Returns the Bundle."""
    from odelt.exporter.export import ExportOptions, export_source
    from odelt.models import save_checkpoint
    from tests.models_zoo import config, random_model

    root.mkdir(parents=True, exist_ok=True)
    save_checkpoint(random_model(config(dit_config)), root / "dit.safetensors")
    vaes = tuple((k, str(save_folder(random_vae(k), root / f"vae-{k}"))) for k in kinds)
    return export_source(str(root / "dit.safetensors"), root / "bundle", ExportOptions(vaes=vaes, **options))
