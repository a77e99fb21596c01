"""A restricted unpickler for upstream Flax checkpoints.

A pickle can name any importable callable and have the loader call it, so a downloaded checkpoint
is hostile until proven otherwise. This unpickler rebuilds exactly what a Flax checkpoint holds:
numeric numpy arrays, their dtypes and scalars, plain containers, and inert stand-ins for
flax/optax/jax state classes. Every other global is refused the moment the pickle names it, before
any call. The allowlist is of (module, name) pairs, never of modules.

numpy's own reconstruction entry points are not safe on hostile arguments: `ndarray(shape, object,
buffer=bytes)` and a dtype whose pickled state declares an object field without the matching flags
both turn file bytes into object pointers (a crash, or worse). So the numpy globals are wrappers
that accept only what numpy itself writes: numeric/string dtypes, never object ones, and a dtype's
state (BUILD) only if it is that dtype's own state. Hence the Python unpickler: its BUILD is checked.
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

OPAQUE_PACKAGES = ("flax", "optax", "jax")   # their classes become Opaque stand-ins
DTYPE_KINDS = "biufcSU"                      # bool, integers, floats, complex, byte and str: no pointers


class Refused(pickle.UnpicklingError):
    """Something the file asked for that a checkpoint never needs (the message says what)."""


def _plain_dtype(dtype: Any) -> np.dtype:
    if not (isinstance(dtype, np.dtype) and dtype.kind in DTYPE_KINDS and dtype.fields is None
            and dtype.subdtype is None and not dtype.hasobject):
        raise Refused(f"refusing numpy dtype {dtype!r}: a checkpoint may only hold {DTYPE_KINDS!r} kinds")
    return dtype


def _dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """numpy.dtype as numpy pickles it: dtype('f4', False, True). Always a fresh copy (a BUILD must
    never reach numpy's shared dtype singletons)."""
    if not isinstance(spec, str) or not isinstance(align, bool):
        raise Refused(f"refusing numpy dtype spec {spec!r}: expected a type string such as 'f4'")
    return _plain_dtype(np.dtype(spec, align=align, copy=True))


class _NdarrayType:
    """What the pickle gets for `numpy.ndarray`: a token for `_reconstruct`. Calling numpy.ndarray
    itself would build arrays over file bytes with any dtype, object pointers included."""

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise Refused("refusing to call numpy.ndarray: only _reconstruct(ndarray, (0,), b'b') builds arrays")


_NDARRAY = _NdarrayType()


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> Any:
    """numpy's _reconstruct as numpy pickles it, (ndarray, (0,), b'b'); BUILD then fills it in."""
    if subtype is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
        raise Refused("refusing numpy _reconstruct arguments other than (ndarray, (0,), b'b')")
    return _multiarray._reconstruct(np.ndarray, (0,), b"b")


def _scalar(dtype: Any, data: Any) -> Any:
    if not isinstance(data, bytes):
        raise Refused(f"refusing a numpy scalar from {type(data).__name__}; expected bytes")
    return _multiarray.scalar(_plain_dtype(dtype), data)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy's protocol-5 array reduction, in-band (the buffer is bytes or a bytearray)."""
    if not isinstance(buf, (bytes, bytearray)) or order not in ("C", "F"):
        raise Refused(f"refusing numpy _frombuffer of {type(buf).__name__}, order {order!r}")
    return _numeric._frombuffer(buf, _plain_dtype(dtype), shape, order)  # type: ignore[attr-defined]


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes (str -> latin-1), and nothing more:
    any other codec name would make the codec registry import a module chosen by the file."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise Refused(f"refusing _codecs.encode({type(text).__name__}, {encoding!r}); "
                      "a checkpoint may only use it as encode(str, 'latin1')")
    return text.encode("latin-1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    fns: dict[str, dict[str, Any]] = {"multiarray": {"_reconstruct": _reconstruct, "scalar": _scalar},
                                      "numeric": {"_frombuffer": _frombuffer}}
    return {(f"{root}.{mod}", name): fn for root in ("numpy.core", "numpy._core")
            for mod, names in fns.items() for name, fn in names.items()}


# Each value builds data from data: none can reach exec, eval, getattr, imports or the OS.
SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    **_numpy_globals(),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
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


def _check_build(inst: Any, state: Any) -> None:
    """BUILD (restore an object's state) only on the three kinds of object that need it."""
    if isinstance(inst, Opaque):
        return
    if isinstance(inst, np.dtype):          # only its own state (byte order aside): no forged fields or flags
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else None
        own = inst.newbyteorder(order) if order in ("<", ">") else inst
        if state != own.__reduce__()[2]:
            raise Refused(f"refusing a state {state!r:.120} for numpy dtype {inst}: not the dtype's own")
        return
    if isinstance(inst, np.ndarray):        # (version, shape, dtype, fortran, raw bytes)
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[4], (bytes, bytearray))):
            raise Refused("refusing a numpy array state that is not (version, shape, dtype, fortran, bytes)")
        _plain_dtype(state[2])
        return
    raise Refused(f"refusing to restore the state of a {type(inst).__name__}: a checkpoint never needs it")


def _is_dotted_name(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


# The pure-Python unpickler, whose opcode table can be extended (the C one's cannot); typeshed
# declares it as the C class, hence Any.
_PyUnpickler: Any = pickle._Unpickler


class FlaxUnpickler(_PyUnpickler):
    """`FlaxUnpickler(f).load()`: SAFE_GLOBALS, Opaque stand-ins, or Refused."""

    def __init__(self, file: BinaryIO):
        super().__init__(file)
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
        raise Refused(f"refusing to unpickle global {module}.{name}: a checkpoint may only hold numpy "
                      f"arrays, plain containers and {'/'.join(OPAQUE_PACKAGES)} state (nothing from it was run)")

    def persistent_load(self, pid: Any) -> Any:
        raise Refused("refusing a persistent id: a checkpoint has none")

    def load_build(self) -> None:
        _check_build(self.stack[-2], self.stack[-1])
        super().load_build()

    dispatch = {**_PyUnpickler.dispatch, pickle.BUILD[0]: load_build}


def load(file: BinaryIO, where: str) -> Any:
    """Unpickle a Flax checkpoint from `file`; `where` names it in errors."""
    try:
        return FlaxUnpickler(file).load()
    except Refused as e:
        raise CheckpointError(f"{where}: {e}".replace("\n", " ")) from None
    except Exception as e:  # hostile bytes can make pickle or numpy raise anything; all mean "bad file"
        raise CheckpointError(f"{where}: cannot unpickle checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {e}".replace("\n", " ")) from None
