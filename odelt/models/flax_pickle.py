"""A restricted unpickler for upstream Flax checkpoints.

A pickle can name any importable callable and have the loader call it, so a downloaded checkpoint
is hostile until proven otherwise. This unpickler rebuilds exactly what a Flax checkpoint holds:
numpy arrays, dtypes and scalars, plain containers, and inert stand-ins for flax/optax/jax state
classes. Every other global is refused (CheckpointError) the moment the pickle names it, before any
call. The allowlist is of (module, name) pairs, never of modules.
"""

from __future__ import annotations

import collections
import pickle
from typing import Any, BinaryIO

import numpy as np

from odelt.errors import CheckpointError

try:  # numpy >= 2 (whose arrays pickle as numpy._core.*; older files say numpy.core.*)
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

# Packages whose classes become Opaque stand-ins (optimiser states, FrozenDicts, TrainState).
OPAQUE_PACKAGES = ("flax", "optax", "jax")


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes (str -> latin-1), and nothing more:
    any other codec name would make the codec registry import a module chosen by the file."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r}) refused; "
                                     "a checkpoint may only use it as encode(str, 'latin1')")
    return text.encode("latin-1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    names = {"multiarray": {"_reconstruct": _multiarray._reconstruct, "scalar": _multiarray.scalar},
             "numeric": {"_frombuffer": _numeric._frombuffer}}  # type: ignore[attr-defined]  # protocol 5
    return {(f"{root}.{mod}", name): fn for root in ("numpy.core", "numpy._core")
            for mod, fns in names.items() for name, fn in fns.items()}


# Each value only builds data from data: none can reach exec, eval, getattr, imports or the OS.
SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    **_numpy_globals(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,              # protocols 2-3 pickle these five by calling them
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "bytes"): bytes,
    ("builtins", "complex"): complex,
    ("_codecs", "encode"): _latin1,
}
_PY2_MODULES = {"__builtin__": "builtins"}   # how protocol 2 spells builtins


class Opaque:
    """Inert stand-in for a flax/optax/jax class. Creating it (REDUCE, NEWOBJ), calling it or
    restoring its state (BUILD) only stores what the pickle passed; nothing stored is ever called."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        self = object.__new__(cls)
        self.args, self.kwargs, self.state = args, kwargs, None
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _is_dotted_name(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


class FlaxUnpickler(pickle.Unpickler):
    """`FlaxUnpickler(f, where).load()`: SAFE_GLOBALS, Opaque stand-ins, or a one-line refusal."""

    def __init__(self, file: BinaryIO, where: str):
        super().__init__(file)
        self.where = where
        self._opaque: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        if (module, name) in SAFE_GLOBALS:
            return SAFE_GLOBALS[(module, name)]
        if module.split(".")[0] in OPAQUE_PACKAGES and _is_dotted_name(module) and name.isidentifier():
            key = (module, name)
            if key not in self._opaque:
                self._opaque[key] = type(name, (Opaque,), {"__module__": f"odelt.opaque.{module}"})
            return self._opaque[key]
        raise CheckpointError(
            f"{self.where}: refusing to unpickle global {module}.{name}: a checkpoint may only hold numpy "
            f"arrays, plain containers and {'/'.join(OPAQUE_PACKAGES)} state (nothing from it was run)")

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"{self.where}: refusing a persistent id in the pickle; a checkpoint has none")


# What hostile or damaged bytes can raise inside pickle/numpy, turned into one line by load().
_BAD_DATA = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
             IndexError, KeyError, MemoryError, OverflowError, RecursionError)


def load(file: BinaryIO, where: str) -> Any:
    """Unpickle a Flax checkpoint from `file`; `where` names it in errors."""
    try:
        return FlaxUnpickler(file, where).load()
    except _BAD_DATA as e:
        raise CheckpointError(f"{where}: cannot unpickle checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {e}".replace("\n", " ")) from None
