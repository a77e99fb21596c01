"""The backend registry: a name -> backend class, and `open_backend` on a bundle.

Every backend class takes (bundle, BackendOptions) and says what callers would otherwise ask of
its name: `batch_bound` (its engines serve only the bundle's exported batch range),
`describe()` (what a profile records about the software it runs on). Heavy libraries (ONNX
Runtime, TensorRT, CUDA, OpenVINO) are imported when a backend is opened, not here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from odelt.errors import ConfigError
from odelt.bundle.bundle import Bundle
from odelt.runtime.backends.openvino import OvBackend
from odelt.runtime.backends.ort import OrtBackend
from odelt.runtime.backends.protocol import Backend, BackendOptions, check_batch
from odelt.runtime.backends.tensorrt import TrtBackend

BACKENDS: dict[str, Any] = {"ort": OrtBackend, "tensorrt": TrtBackend, "openvino": OvBackend}


def backend_class(name: str) -> Any:
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; expected one of {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name]


def open_backend(name: str, bundle: Bundle, options: BackendOptions | None = None, **fields: Any) -> Backend:
    """Backend `name` on a bundle (enter it with `with`); `fields` set BackendOptions by keyword."""
    opts = replace(options or BackendOptions(), **fields)
    return backend_class(name)(bundle, opts)


__all__ = ["BACKENDS", "Backend", "BackendOptions", "backend_class", "check_batch", "open_backend"]
