"""The tiny test models, by name: one registry instead of a config copied into every test package.

`random_model(name, seed)` is a DiT of that config with random weights whose velocity is not zero
(upstream zero-inits the final layer: its parameters are drawn from N(0, std^2) here)."""

from __future__ import annotations

import dataclasses

from odelt.models.config import DiTConfig

TINY = DiTConfig(input_size=8, in_channels=1, out_channels=1, hidden_size=32, depth=4, num_heads=2,
                 depth_group=2, depth_min=2, num_classes=10)

CONFIGS: dict[str, DiTConfig] = {
    "tiny": TINY,                                          # lengths 2, 4
    "tiny-depth6": dataclasses.replace(TINY, depth=6),     # lengths 2, 4, 6
    "tiny-depth5": dataclasses.replace(TINY, depth=5),     # lengths 2, 4; block 4 dead at every length
    "tiny-depth2": dataclasses.replace(TINY, depth=2),     # length 2: the smallest engine builds
    "tiny-latent": dataclasses.replace(TINY, in_channels=4, out_channels=4),   # 4x8x8 latents (decoder stage)
}


def config(name: str) -> DiTConfig:
    return CONFIGS[name]


def random_model(name: str = "tiny", seed: int = 0, std: float = 0.05):
    """An eval-mode DiT of config `name` (or a DiTConfig), seeded, its final layer drawn at `std`."""
    import torch

    from odelt.models.dit import DiT

    torch.manual_seed(seed)
    model = DiT(CONFIGS[name] if isinstance(name, str) else name).eval()
    with torch.no_grad():
        for p in model.final.parameters():
            p.normal_(0.0, std)
    return model
