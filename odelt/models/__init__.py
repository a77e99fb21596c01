"""The ODE_t(ODE_l) DiT in PyTorch: config, presets, model, checkpoints.

The config is torch-free; the model and checkpoint loaders are imported on first use, so code
that only needs DiTConfig (bundle readers, the runtime on a device without torch) never imports torch.
"""

from typing import Any

from odelt.models.config import PRESETS, DiTConfig, preset

__all__ = ["DiT", "DiTConfig", "PRESETS", "preset", "load_checkpoint", "save_checkpoint"]

_LAZY = {"DiT": "odelt.models.dit", "load_checkpoint": "odelt.models.checkpoint",
         "save_checkpoint": "odelt.models.checkpoint"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'odelt.models' has no attribute {name!r}")
