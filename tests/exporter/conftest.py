"""Tiny random models and their bundles, shared by the exporter tests (exports are the slow part)."""

import pytest
import torch

from odelt.exporter.export import ExportOptions, export_source
from odelt.models import DiT, DiTConfig, save_checkpoint

# depth 5 with groups of 2: lengths 2 and 4, block 4 is dead at every length.
from tests.models_zoo import config

TINY = config("tiny-depth5")


def random_model(cfg: DiTConfig = TINY, seed: int = 0) -> DiT:
    """Every parameter random: no zero biases (they would collide in duplicate checks) and no
    zero-init final layer (it would make every output 0, hiding errors)."""
    torch.manual_seed(seed)
    model = DiT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(random_model(), path)
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tiny_ckpt, tmp_path_factory):
    """Both layouts, default lengths, opset 17, no cfg."""
    out = tmp_path_factory.mktemp("bundles") / "both"
    export_source(str(tiny_ckpt), out, ExportOptions(layouts=("segments", "per-length")))
    return out


@pytest.fixture(scope="session")
def cfg_bundle(tiny_ckpt, tmp_path_factory):
    """Both layouts with classifier-free guidance folded in, opset 16 (the TensorRT 8.5 path)."""
    out = tmp_path_factory.mktemp("bundles") / "cfg16"
    export_source(str(tiny_ckpt), out, ExportOptions(layouts=("segments", "per-length"), guidance=True, opset=16))
    return out



# The decoder export tests (test_decoder.py) read the latent tests' tiny VAEs.
from tests.latent.conftest import configs, kl, taesd, vae_dir  # noqa: E402,F401  (fixtures)
