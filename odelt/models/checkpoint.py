"""Checkpoints: our own safetensors files (weights + config), the embedded `builtin:` models, and
upstream's pickled Flax checkpoints (nested dicts of numpy arrays, Dense kernels [in, out], Conv
HWIO)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from odelt.errors import CheckpointError, ConfigError
from odelt.fileio import atomic_path
from odelt.models import flax_pickle
from odelt.models.config import DiTConfig
from odelt.models.dit import DiT

WEIGHTS_DIR = Path(__file__).parent / "weights"
BUILTIN_PREFIX = "builtin:"
_FORMAT = "odelt-dit/1"
BUILTIN_VAES = {"digits-latent": "digits_vae"}    # latent builtin model -> its autoencoder folder


def _builtin_names() -> list[str]:
    return sorted(p.stem.replace("_", "-") for p in WEIGHTS_DIR.glob("*.safetensors")
                  if not p.stem.endswith("_classifier"))


def builtin_path(name: str) -> Path:
    """The DiT of `builtin:<name>`; a name's hyphens are underscores in its file name
    (builtin:digits-latent is weights/digits_latent.safetensors)."""
    path = WEIGHTS_DIR / f"{name.replace('-', '_')}.safetensors"
    # only the listed spelling: builtin:digits_latent would load the DiT but not find its autoencoder
    if name not in _builtin_names() or not path.is_file():
        raise CheckpointError(f"unknown builtin model {name!r}; expected one of {_builtin_names()}")
    return path


def builtin_vae_path(name: str) -> Path:
    """The autoencoder folder (diffusers format) whose latents the builtin DiT `name` generates."""
    builtin_path(name)                                    # an unknown name fails as for the DiT
    if name not in BUILTIN_VAES:
        raise CheckpointError(f"builtin model {name!r} works on pixels and has no autoencoder; expected one of "
                              f"{sorted(BUILTIN_VAES)}")
    return WEIGHTS_DIR / BUILTIN_VAES[name]


def vae_for_source(source: str | os.PathLike) -> tuple[str, str] | None:
    """The decoder stage (kind, path) a source's latents need, as `export --vae KIND:PATH` takes it:
    the shipped autoencoder of a latent builtin model; None for pixel builtins and for checkpoint
    files (which do not say which VAE their latents belong to: pass --vae)."""
    s = str(source)
    name = s[len(BUILTIN_PREFIX):] if s.startswith(BUILTIN_PREFIX) else None
    if name is None or name not in BUILTIN_VAES:
        return None
    return "sd", str(builtin_vae_path(name))          # the digits autoencoder is an AutoencoderKL


def resolve_source(source: str | os.PathLike) -> Path:
    """'builtin:<name>' or a path -> an existing file path."""
    s = str(source)
    if s.startswith(BUILTIN_PREFIX):
        return builtin_path(s[len(BUILTIN_PREFIX):])
    path = Path(s)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: expected a file or builtin:<name>, found {s!r}")
    return path


def save_checkpoint(model: DiT, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Write weights + config as one safetensors file, atomically (temp file, then rename)."""
    from safetensors.torch import save_file

    meta = {"format": _FORMAT, "config": json.dumps(model.config.to_dict()), **(extra or {})}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={k: str(v) for k, v in meta.items()})


def load_checkpoint(source: str | os.PathLike, config: DiTConfig | dict | None = None) -> DiT:
    """Load a DiT in eval mode from `builtin:<name>`, our safetensors file, or an upstream pickle.

    Args:
        source: `builtin:digits`, a `.safetensors` file written by `save_checkpoint`, or an upstream
            Flax pickle (`{'params': ...}` or `{'train_state': {'params': ...}}`).
        config: required for upstream pickles: a DiTConfig or a dict with upstream's field names
            (unknown training keys are ignored). For our own files it must match the stored one.
    Raises:
        CheckpointError: unreadable file, missing/misshapen weights, or a config mismatch.
    """
    path = resolve_source(source)
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":  # safetensors: 8-byte header length, then a JSON header
        return _load_safetensors(path, config)
    if head[:1] == b"\x80":  # pickle protocol >= 2
        return _load_upstream_pickle(path, config)
    raise CheckpointError(f"{path}: expected a safetensors checkpoint or an upstream pickle, found neither")


def _as_config(config: DiTConfig | dict) -> DiTConfig:
    return config if isinstance(config, DiTConfig) else DiTConfig.from_dict(config, strict=False)


def _load_safetensors(path: Path, config: DiTConfig | dict | None) -> DiT:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({e})") from None
    if meta.get("format") != _FORMAT or "config" not in meta:
        raise CheckpointError(f"{path}: expected an odelt checkpoint (format {_FORMAT}), found metadata {sorted(meta)}")
    try:
        stored_dict = json.loads(meta["config"])
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{path}: metadata 'config': expected a JSON object of model config fields, found "
                              f"invalid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    stored = DiTConfig.from_dict(stored_dict)
    if config is not None and _as_config(config) != stored:
        raise ConfigError(f"{path}: the given config {_as_config(config)} differs from the stored one {stored}")
    return _build(stored, {k: v.float() for k, v in state.items()}, str(path))


def _build(config: DiTConfig, state: dict[str, torch.Tensor], where: str) -> DiT:
    model = DiT(config)
    expected = model.state_dict()
    for name, ref in expected.items():
        if name not in state:
            raise CheckpointError(f"{where}: missing weight {name!r} (expected shape {tuple(ref.shape)})")
        if tuple(state[name].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{where}: weight {name!r} has shape {tuple(state[name].shape)}, expected {tuple(ref.shape)}; "
                "does the config match the checkpoint?")
        if not bool(torch.isfinite(state[name]).all()):
            raise CheckpointError(f"{where}: weight {name!r} has NaN or Inf values; expected finite weights "
                                  "(the checkpoint is damaged or from a diverged training run)")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CheckpointError(f"{where}: unexpected weights {extra[:3]}{'...' if len(extra) > 3 else ''} "
                              "for this config (is depth too small?)")
    model.load_state_dict(state)
    return model.eval()


# -- upstream Flax pickles ----------------------------------------------------------------------

def _unwrap(node):
    """FrozenDicts and other wrappers pickled by reduce -> plain dict."""
    if isinstance(node, flax_pickle.Opaque):
        for arg in [*node.args, *node.kwargs.values(), node.state]:
            if isinstance(arg, dict):
                return arg
    return node


def _flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
    tree = _unwrap(tree)
    out: dict[str, np.ndarray] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}/"))
    elif isinstance(tree, np.ndarray):
        out[prefix[:-1]] = tree
    return out


def read_pickle(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        ckpt = flax_pickle.load(f, str(path))
    ckpt = _unwrap(ckpt)
    if isinstance(ckpt, dict) and "train_state" in ckpt:         # shortcut-models originals
        ckpt = _unwrap(ckpt["train_state"])
    if not isinstance(ckpt, dict) or "params" not in ckpt:
        found = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: expected an upstream checkpoint with a 'params' tree, found {found}")
    # Upstream's eval loads ckpt['params'] into both params and params_ema; so do we.
    return _flatten(ckpt["params"])


def _flax_to_torch_names(depth: int) -> dict[str, tuple[str, str]]:
    """torch name -> (flax path, kind); kind says how to lay the array out."""
    m: dict[str, tuple[str, str]] = {
        "x_embedder.weight": ("PatchEmbed_0/Conv_0/kernel", "conv"),
        "x_embedder.bias": ("PatchEmbed_0/Conv_0/bias", "bias"),
        "y_embedder.weight": ("LabelEmbedder_0/Embed_0/embedding", "embed"),
        "l_embedder.weight": ("BlockEmbedder_0/Embed_0/embedding", "embed"),
    }

    def dense(torch_name: str, flax_name: str) -> None:
        m[f"{torch_name}.weight"] = (f"{flax_name}/kernel", "dense")
        m[f"{torch_name}.bias"] = (f"{flax_name}/bias", "bias")

    for i, mod in enumerate(("t_embedder", "dt_embedder")):
        dense(f"{mod}.mlp.0", f"TimestepEmbedder_{i}/Dense_0")
        dense(f"{mod}.mlp.2", f"TimestepEmbedder_{i}/Dense_1")
    for i in range(depth):
        blk = f"DiTBlock_{i}"
        # Flax creation order: Dense_1 = K, Dense_2 = Q, Dense_3 = V (not Q, K, V).
        for name, flax in (("adaLN", "Dense_0"), ("attn.k", "Dense_1"), ("attn.q", "Dense_2"),
                           ("attn.v", "Dense_3"), ("attn.proj", "Dense_4"),
                           ("fc1", "MlpBlock_0/Dense_0"), ("fc2", "MlpBlock_0/Dense_1")):
            dense(f"blocks.{i}.{name}", f"{blk}/{flax}")
    dense("final.adaLN", "FinalLayer_0/Dense_0")
    dense("final.linear", "FinalLayer_0/Dense_1")
    return m


_LAYOUT = {
    "dense": lambda a: a.T,                          # [in, out] -> [out, in]
    "conv": lambda a: a.transpose(3, 2, 0, 1),       # HWIO -> OIHW
    "bias": lambda a: a,
    "embed": lambda a: a,
}


_RANK = {"dense": 2, "conv": 4, "bias": 1, "embed": 2}


def _load_upstream_pickle(path: Path, config: DiTConfig | dict | None) -> DiT:
    if config is None:
        raise CheckpointError(f"{path}: an upstream pickle needs its model config (num_heads and depth_group "
                              "cannot be read from the weights); pass config= or --config FILE")
    cfg = _as_config(config)
    flat = read_pickle(path)
    state = {}
    for torch_name, (flax_name, kind) in _flax_to_torch_names(cfg.depth).items():
        if flax_name not in flat:
            raise CheckpointError(f"{path}: missing key params/{flax_name} (needed for {torch_name})")
        array = flat[flax_name]
        if array.dtype.kind not in "fiu":
            raise CheckpointError(f"{path}: params/{flax_name} has dtype {array.dtype}, expected a numeric array")
        if array.ndim != _RANK[kind]:                    # before the layout change, which needs the rank
            raise CheckpointError(f"{path}: params/{flax_name} has {array.ndim} dimensions {array.shape}, expected "
                                  f"{_RANK[kind]} (a {kind} {'kernel' if kind in ('dense', 'conv') else 'array'})")
        state[torch_name] = torch.from_numpy(np.ascontiguousarray(_LAYOUT[kind](array), dtype=np.float32))
    blocks = {k.split("/")[0] for k in flat if k.startswith("DiTBlock_")}
    if len(blocks) > cfg.depth:
        raise CheckpointError(f"{path}: checkpoint has {len(blocks)} DiT blocks but the config says depth={cfg.depth}")
    return _build(cfg, state, str(path))
