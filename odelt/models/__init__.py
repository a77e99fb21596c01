"""The ODE_t(ODE_l) DiT in PyTorch: config, presets, model, checkpoints."""

from odelt.models.checkpoint import load_checkpoint, save_checkpoint
from odelt.models.config import PRESETS, DiTConfig, preset
from odelt.models.dit import DiT

__all__ = ["DiT", "DiTConfig", "PRESETS", "preset", "load_checkpoint", "save_checkpoint"]
