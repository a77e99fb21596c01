"""Package faces that load on first use. A package's `__init__` re-exports its verbs by name, but
importing the package must stay cheap (no torch, onnx or ONNX Runtime until a verb is used) and must
not run its submodules (a submodule importing a sibling would otherwise run the whole face first)::

    from odelt.lazy import face
    __all__, __getattr__, __dir__ = face(__name__, {"odelt.runtime.sampler": ("Sampler", "make_noise")})
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, Sequence


def face(package: str, exports: Mapping[str, Sequence[str]], eager: Sequence[str] = ()
         ) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """(__all__, __getattr__, __dir__) for `package`: each name in `exports[module]` is read from
    `module` when first asked for; "public=inner" offers `module.inner` as `public` (two modules of
    one package may use the same name). `eager` names are those the package binds itself."""
    where = {}
    for module, names in exports.items():
        for entry in names:
            public, _, inner = entry.partition("=")
            where[public] = (module, inner or public)

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, inner = where[name]
        return getattr(importlib.import_module(module), inner)

    def __dir__() -> list[str]:
        return sorted(set(where) | set(eager))

    return [*eager, *where], __getattr__, __dir__
