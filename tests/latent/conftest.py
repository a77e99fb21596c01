"""Tiny random VAEs saved once per session in each format the decoder stage reads."""

import pytest

from tests.latent.vae_files import KL_CONFIG, TINY_CONFIG, random_vae, save_folder


@pytest.fixture(scope="session")
def vae_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("vaes")


@pytest.fixture(scope="session")
def kl(vae_dir):
    """(model, folder) of a tiny AutoencoderKL in diffusers' own folder format."""
    model = random_vae("sd")
    return model, save_folder(model, vae_dir / "kl")


@pytest.fixture(scope="session")
def taesd(vae_dir):
    model = random_vae("taesd")
    return model, save_folder(model, vae_dir / "taesd")


@pytest.fixture(scope="session")
def configs():
    return {"sd": KL_CONFIG, "taesd": TINY_CONFIG}
