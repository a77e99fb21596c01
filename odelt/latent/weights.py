"""Reading a VAE's weights: a diffusers safetensors file or upstream's Flax msgpack, told apart by
their first bytes (never by the file name), into one float32 state dict with diffusers' current
names. Both spellings of the VAE attention load: the legacy `query/key/value/proj_attn` that
files written before diffusers renamed its attention use, and the current
`to_q/to_k/to_v/to_out.0`. A pickle (a `.bin`/`.pt`/`.ckpt` file, whatever it is named) is
refused unread."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from odelt.errors import CheckpointError

SAFETENSORS = "safetensors"
MSGPACK = "msgpack"
# legacy attention names -> current ones (diffusers' rename of its VAE attention block)
_LEGACY = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_KEY = re.compile(r"^(.*\.attentions\.\d+\.)(query|key|value|proj_attn)\.(weight|bias)$")
_CURRENT_KEY = re.compile(r"^.*\.attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)$")


@dataclass(frozen=True)
class Weights:
    """A VAE's tensors by their current diffusers names, and how the file spelled them."""

    path: Path
    format: str                        # "safetensors" | "msgpack"
    spelling: str                      # "current" | "legacy" | "none" (no attention in the file)
    state: dict[str, torch.Tensor]


def sniff(path: Path) -> str:
    """The file's format from its first bytes; anything else is a one-line refusal."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
    if len(head) >= 9 and head[8:9] == b"{":            # 8-byte little-endian header size, then JSON
        return SAFETENSORS
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise CheckpointError(f"{path}: this is a Python pickle; refusing to unpickle it (expected a "
                              "safetensors file or a Flax msgpack checkpoint)")
    if head[:2] == b"PK":
        raise CheckpointError(f"{path}: this is a zip archive (a torch .bin/.pt pickle); refusing it (expected "
                              "a safetensors file or a Flax msgpack checkpoint)")
    if head[:1] and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):   # a msgpack map
        return MSGPACK
    raise CheckpointError(f"{path}: expected a safetensors file or a Flax msgpack checkpoint, found neither "
                          f"(first bytes {head[:8].hex()})")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: not a readable safetensors file ({reason})") from None


def _read_msgpack(path: Path) -> dict[str, torch.Tensor]:
    from odelt.latent.flax_msgpack import read_msgpack, torch_state_from_flax

    return {k: torch.from_numpy(v) for k, v in torch_state_from_flax(read_msgpack(path), path).items()}


def current_names(state: dict[str, torch.Tensor], where: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Rename legacy attention keys to the current spelling; returns (state, spelling found)."""
    legacy = [k for k in state if _LEGACY_KEY.match(k)]
    current = [k for k in state if _CURRENT_KEY.match(k)]
    if legacy and current:
        raise CheckpointError(f"{where}: mixes attention spellings ({legacy[0]} and {current[0]}); expected "
                              "either query/key/value/proj_attn or to_q/to_k/to_v/to_out.0")
    out = {}
    for k, v in state.items():
        hit = _LEGACY_KEY.match(k)
        out[f"{hit.group(1)}{_LEGACY[hit.group(2)]}.{hit.group(3)}" if hit else k] = v
    return out, "legacy" if legacy else "current" if current else "none"


def read_weights(path: Path, formats: tuple[str, ...]) -> Weights:
    """The float32 state of a weights file in one of `formats`."""
    fmt = sniff(path)
    if fmt not in formats:
        raise CheckpointError(f"{path}: is a {fmt} file; expected {' or '.join(formats)} for this VAE kind")
    raw = _read_safetensors(path) if fmt == SAFETENSORS else _read_msgpack(path)
    bad = [k for k, v in raw.items() if not v.is_floating_point()]
    if bad:
        raise CheckpointError(f"{path}: weight {bad[0]!r} has dtype {raw[bad[0]].dtype}; expected floating point")
    state, spelling = current_names({k: v.float() for k, v in raw.items()}, path)
    return Weights(path, fmt, spelling, state)
