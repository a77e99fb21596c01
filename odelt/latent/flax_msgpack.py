"""A data-only reader for Flax msgpack checkpoints (`flax.serialization.to_bytes` of a params tree),
and the renaming of a Flax VAE tree to diffusers' PyTorch names.

Flax writes a params tree as nested msgpack maps whose leaves are msgpack *extension* objects: code
1 holds one ndarray as a nested msgpack triple (shape, dtype name, raw C-order bytes). This reader
decodes exactly that: every other extension code is refused, dtypes come from a fixed list of
float names (numpy never sees a dtype string it could turn into an object dtype), the byte count
must equal the shape's, and the tree may hold only string-keyed maps and arrays. Nothing in the
file is ever called, imported or unpickled.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from odelt.errors import CheckpointError

NDARRAY_EXT = 1                 # flax.serialization's code for an ndarray leaf
BFLOAT16 = "bfloat16"           # numpy has no bfloat16: widened to float32 by hand
_DTYPES: dict[str, np.dtype] = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4"), "float64": np.dtype("<f8"),
           BFLOAT16: np.dtype("<u2")}
MAX_RANK = 8


class _Refused(Exception):
    """Raised inside the msgpack ext hook; turned into a CheckpointError naming the file."""


def _dims(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_RANK or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _Refused(f"an ndarray shape must be up to {MAX_RANK} integers >= 0, found {shape!r}")
    return tuple(shape)


def _ndarray(data: bytes) -> np.ndarray:
    import msgpack

    try:
        triple = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:            # the nested payload is file bytes too: any failure is a bad file
        raise _Refused(f"an ndarray payload is not valid msgpack ({type(e).__name__})") from None
    if not isinstance(triple, (list, tuple)) or len(triple) != 3:
        raise _Refused("an ndarray payload must be (shape, dtype, bytes)")
    shape, name, buf = triple
    name = name.decode("ascii", "replace") if isinstance(name, bytes) else name
    if name not in _DTYPES:
        raise _Refused(f"ndarray dtype {name!r} is not a weight dtype; expected one of {sorted(_DTYPES)}")
    dims, dtype = _dims(shape), _DTYPES[name]
    need = math.prod(dims) * dtype.itemsize            # exact (Python ints): a huge shape cannot wrap around
    if not isinstance(buf, bytes) or len(buf) != need:
        size = len(buf) if isinstance(buf, bytes) else type(buf).__name__
        raise _Refused(f"an ndarray of shape {dims} and dtype {name} needs {need} bytes, found {size}")
    arr = np.frombuffer(buf, dtype=dtype).reshape(dims)
    if name == BFLOAT16:                 # bf16 is the top half of a float32
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32)


def _ext_hook(code: int, data: bytes) -> np.ndarray:
    if code != NDARRAY_EXT:
        raise _Refused(f"msgpack extension type {code} is not a Flax ndarray (type {NDARRAY_EXT}); refusing it")
    return _ndarray(data)


def _flatten(node: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
    if isinstance(node, np.ndarray):
        out[prefix] = node
        return
    if not isinstance(node, dict):
        raise _Refused(f"{prefix or 'the top level'} holds a {type(node).__name__}; expected a map of arrays")
    for key, value in node.items():
        if not isinstance(key, str):
            raise _Refused(f"a map key under {prefix or 'the top level'} is {type(key).__name__}; expected a string")
        _flatten(value, f"{prefix}/{key}" if prefix else key, out)


def read_msgpack(path: Path) -> dict[str, np.ndarray]:
    """{'decoder/conv_in/kernel': float32 array, ...} from a Flax msgpack file (a top-level
    'params' map is unwrapped)."""
    import msgpack

    data = path.read_bytes()
    try:
        tree = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=True)
        if isinstance(tree, dict) and set(tree) == {"params"}:
            tree = tree["params"]
        flat: dict[str, np.ndarray] = {}
        _flatten(tree, "", flat)
    except _Refused as e:
        raise CheckpointError(f"{path}: not a Flax msgpack checkpoint: {e}") from None
    except Exception as e:             # truncated, trailing bytes, too deep, not msgpack at all
        what = "truncated or not msgpack" if isinstance(e, ValueError) else type(e).__name__
        raise CheckpointError(f"{path}: expected a Flax msgpack checkpoint, found unreadable content ({what})") \
            from None
    if not flat:
        raise CheckpointError(f"{path}: expected a Flax msgpack checkpoint with arrays, found none")
    return flat


# -- Flax names -> diffusers' PyTorch names -------------------------------------------------------

_INDEX = re.compile(r"^(.+)_(\d+)$")


def _torch_name(flax_name: str, ndim: int) -> tuple[str, str]:
    """'decoder/up_blocks_0/resnets_1/conv1/kernel' -> ('decoder.up_blocks.0.resnets.1.conv1.weight', 'conv')."""
    *mods, leaf = flax_name.split("/")
    parts = []
    for m in mods:
        hit = _INDEX.match(m)
        parts.append(f"{hit.group(1)}.{hit.group(2)}" if hit else m)
    if leaf == "kernel":
        layout = {4: "conv", 2: "dense"}.get(ndim, "bad")
        leaf = "weight"
    elif leaf == "scale":                # GroupNorm / LayerNorm gain
        layout, leaf = "plain", "weight"
    else:
        layout = "plain"
    return ".".join(parts + [leaf]), layout


def torch_state_from_flax(flat: dict[str, np.ndarray], where: Path) -> dict[str, np.ndarray]:
    """Rename and re-lay-out a flat Flax VAE tree: Conv kernels HWIO -> OIHW, Dense kernels
    (in, out) -> (out, in), norm `scale` -> `weight`; list indices `_N` -> `.N`."""
    out = {}
    for name, arr in flat.items():
        torch_name, layout = _torch_name(name, arr.ndim)
        if layout == "bad":
            raise CheckpointError(f"{where}: {name} is a kernel of rank {arr.ndim}; expected a Conv (4) or "
                                  "Dense (2) kernel")
        if layout == "conv":
            arr = arr.transpose(3, 2, 0, 1)
        elif layout == "dense":
            arr = arr.T
        if torch_name in out:
            raise CheckpointError(f"{where}: two arrays map to {torch_name} (one is {name})")
        out[torch_name] = np.ascontiguousarray(arr)
    return out
