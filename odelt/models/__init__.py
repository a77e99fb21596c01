"""The ODE_t(ODE_l) DiT in PyTorch: config, presets, model, checkpoints, the digits classifier
and the torch reference samplers.

The config is torch-free; the model and checkpoint loaders are imported on first use, so code
that only needs DiTConfig (bundle readers, the runtime on a device without torch) never imports torch.
"""

from odelt.lazy import face
from odelt.models.config import PRESETS, DiTConfig, preset  # noqa: F401  (eager: torch-free)

__all__, __getattr__, __dir__ = face(__name__, {
    "odelt.models.dit": ("DiT",),
    "odelt.models.checkpoint": ("load_checkpoint", "save_checkpoint", "resolve_source", "BUILTIN_PREFIX",
                                "BUILTIN_VAES", "builtin_vae_path"),
    "odelt.models.classifier": ("score_images",),
    "odelt.models.sampling": ("sample_euler", "sample_dopri5", "sample_labels_noise"),
}, eager=("DiTConfig", "PRESETS", "preset"))
