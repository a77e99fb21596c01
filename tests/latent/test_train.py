"""The latent model's training half: the digits autoencoder (diffusers AutoencoderKL), its scaling
factor, its diffusers-format folder, the DiT on its latents, and the shipped builtin:digits-latent."""

import json
import pickle

import numpy as np
import pytest
import torch

from odelt.data import load_digits_nchw, pool_to_digits, split_digits, upsample_digits
from odelt.errors import CheckpointError, ConfigError
from odelt.fileio import OUTPUT_MARK
from odelt.latent import train as lt
from odelt.models.config import PRESETS, DiTConfig
from odelt.models.train import TrainConfig, train

TINY_VAE = lt.VAEConfig(block_out_channels=(8, 8, 8, 8), norm_num_groups=4, steps=40, batch_size=16, lr=3e-3,
                        warmup=2, seed=0)
TINY_LATENT_DIT = DiTConfig(input_size=4, in_channels=4, out_channels=4, patch_size=1, hidden_size=32, depth=4,
                            num_heads=2, depth_group=2, depth_min=2, num_classes=10)


@pytest.fixture(scope="module")
def tiny_vae():
    """A tiny autoencoder after 40 steps, with its scaling factor set from all digits' latents."""
    x = load_digits_nchw()[0][:256]
    vae, mses = lt.train_vae(TINY_VAE, x, progress=False)
    lt.set_scaling_factor(vae, lt.posterior_mean(vae, load_digits_nchw()[0]))
    return vae, mses


def test_upsampling_is_undone_exactly_by_pooling():
    x = load_digits_nchw()[0][:20]
    up = upsample_digits(x, 4)
    assert up.shape == (20, 1, 32, 32) and np.array_equal(up[:, :, 4:8, 8:12].max((2, 3)), x[:, :, 1, 2])
    assert np.array_equal(pool_to_digits(up), x)
    assert np.array_equal(pool_to_digits(up * 3.0), np.clip(x * 3.0, -1, 1))     # clipped before pooling
    with pytest.raises(ConfigError, match=r"\(N, C, 8k, 8k\), found \(2, 1, 30, 30\)"):
        pool_to_digits(np.zeros((2, 1, 30, 30)))


def test_vae_config_is_sd_shaped_and_checked():
    cfg = lt.VAEConfig()
    assert (cfg.downsampling, cfg.latent_size, cfg.latent_channels) == (8, 4, 4)
    vae = lt.make_vae(cfg)
    z = vae.encode(torch.zeros(2, 1, 32, 32)).latent_dist.mean
    assert tuple(z.shape) == (2, 4, 4, 4) and tuple(vae.decode(z).sample.shape) == (2, 1, 32, 32)
    with pytest.raises(ConfigError, match="multiples of norm_num_groups=8, found \\[12\\]"):
        lt.VAEConfig(block_out_channels=(8, 12, 16, 16))
    with pytest.raises(ConfigError, match="--kl-weight: expected a finite number >= 0, found -1"):
        lt.VAEConfig(kl_weight=-1)


def test_tiny_vae_loss_falls(tiny_vae):
    vae, mses = tiny_vae
    assert np.mean(mses[-8:]) < 0.6 * np.mean(mses[:8]), (mses[:8], mses[-8:])
    assert not vae.training and all(not p.requires_grad for p in vae.parameters())


def test_scaling_factor_is_one_over_std_and_divided_out_once(tiny_vae):
    vae, _ = tiny_vae
    x = load_digits_nchw()[0]
    raw = lt.posterior_mean(vae, x)
    factor = float(vae.config.scaling_factor)
    assert factor == pytest.approx(1.0 / float(raw.std()), rel=1e-6) and factor != 1.0
    z = lt.encode_scaled(vae, x)
    assert float(z.std()) == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(z, raw * factor)
    with torch.no_grad():
        once = vae.decode(z[:8] / factor).sample
        unscaled = vae.decode(z[:8]).sample
    torch.testing.assert_close(lt.decode_scaled(vae, z[:8]), once)
    assert float((once - unscaled).abs().max()) > 1e-3          # dividing matters: a missed division shows


def test_encoder_input_shapes(tiny_vae):
    vae, _ = tiny_vae
    x = load_digits_nchw()[0][:3]
    torch.testing.assert_close(lt.posterior_mean(vae, x), lt.posterior_mean(vae, upsample_digits(x, 4)))
    with pytest.raises(ConfigError, match=r"\(N, 1, 32, 32\) or 8x8 digits, found \(3, 1, 16, 16\)"):
        lt.posterior_mean(vae, np.zeros((3, 1, 16, 16), np.float32))


def test_saved_folder_is_diffusers_format_and_replaces_the_old(tiny_vae, tmp_path):
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    vae, _ = tiny_vae
    out = tmp_path / "vae"
    out.mkdir()
    (out / "notes.txt").write_text("a user's file")
    with pytest.raises(ConfigError, match="not an odelt autoencoder"):   # never someone else's folder
        lt.save_vae(vae, out)
    (out / "notes.txt").unlink()
    lt.save_vae(vae, out)
    (out / "stale.txt").write_text("from an earlier run")             # our own output: replaced whole
    lt.save_vae(vae, out)
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARK, lt.CONFIG_FILE, lt.WEIGHTS_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae"]            # no partial / old folder left
    assert {oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {"0o644"}
    config = json.loads((out / lt.CONFIG_FILE).read_text())
    assert config["_class_name"] == "AutoencoderKL" and config["scaling_factor"] == vae.config.scaling_factor
    # what a plain diffusers reader does: config -> model, safetensors -> state dict (strict)
    rebuilt = AutoencoderKL.from_config(AutoencoderKL.load_config(str(out)))
    rebuilt.load_state_dict(load_file(str(out / lt.WEIGHTS_FILE)), strict=True)
    z = lt.encode_scaled(vae, load_digits_nchw()[0][:4])
    loaded = lt.load_vae(out)
    torch.testing.assert_close(lt.decode_scaled(loaded, z), lt.decode_scaled(vae, z))
    assert float(loaded.config.scaling_factor) == float(vae.config.scaling_factor)


class _Payload:
    """Unpickling this would create a file: a loader that unpickles is caught by the file existing."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_vae_refuses_bad_folders_and_never_unpickles(tiny_vae, tmp_path):
    vae, _ = tiny_vae
    with pytest.raises(CheckpointError, match="missing \\['config.json', 'diffusion_pytorch_model.safetensors'\\]"):
        lt.load_vae(tmp_path / "nowhere")
    good = tmp_path / "good"
    lt.save_vae(vae, good)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / lt.CONFIG_FILE).write_text((good / lt.CONFIG_FILE).read_text())
    marker = tmp_path / "unpickled"
    (pickled / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({"w": _Payload(str(marker))}))
    with pytest.raises(CheckpointError, match="missing \\['diffusion_pytorch_model.safetensors'\\]"):
        lt.load_vae(pickled)
    (pickled / lt.WEIGHTS_FILE).write_bytes(pickle.dumps({"w": _Payload(str(marker))}))   # a pickle by the name
    with pytest.raises(CheckpointError, match="this is a Python pickle; refusing to unpickle it"):
        lt.load_vae(pickled)
    assert not marker.exists()
    truncated = tmp_path / "truncated"
    lt.save_vae(vae, truncated)
    data = (truncated / lt.WEIGHTS_FILE).read_bytes()
    (truncated / lt.WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        lt.load_vae(truncated)
    # a decoder-only file serves the decoder stage, not training: the encoder makes the latents
    from safetensors.torch import save_file

    decoder_only = tmp_path / "decoder-only"
    lt.save_vae(vae, decoder_only)
    state = {k: v.contiguous() for k, v in vae.state_dict().items() if not k.startswith(("encoder.", "quant_conv."))}
    save_file(state, str(decoder_only / lt.WEIGHTS_FILE))
    with pytest.raises(CheckpointError, match="missing weight 'encoder.conv_in.weight'"):
        lt.load_vae(decoder_only)


def test_dit_on_tiny_latents_loss_falls(tiny_vae):
    vae, _ = tiny_vae
    x, y = lt.latent_training_data(vae, (4, 4))
    assert x.shape == (1797, 4, 4, 4) and y.shape == (1797,) and abs(float(x.std()) - 1.0) < 1e-4
    cfg = TrainConfig(model=TINY_LATENT_DIT, steps=80, batch_size=32, lr=3e-3, warmup=5, seed=0)
    _, losses = train(cfg, x, y, progress=False)
    assert np.mean(losses[-10:]) < 0.75 * np.mean(losses[:10]), (losses[:10], losses[-10:])
    with pytest.raises(ConfigError, match="latents are 4x4x4; the model expects 1x8x8"):
        lt.latent_training_data(vae, (1, 8))


# -- the shipped builtin:digits-latent ---------------------------------------------------------------

def test_shipped_digits_latent_loads_and_decodes_digits():
    from safetensors import safe_open

    from odelt.fileio import file_hash
    from odelt.models import load_checkpoint
    from odelt.models.checkpoint import builtin_path, builtin_vae_path
    from odelt.models.classifier import accuracy, load_classifier

    dit = load_checkpoint("builtin:digits-latent")
    assert dit.config == PRESETS["digits-latent"] and dit.config.lengths == (2, 4, 6, 8)
    folder = builtin_vae_path("digits-latent")
    vae = lt.load_vae(folder)
    assert (vae.config.in_channels, vae.config.latent_channels, vae.config.sample_size) == (1, 4, 32)
    with safe_open(str(builtin_path("digits-latent")), framework="pt") as f:
        meta = f.metadata()
    assert meta["vae_hash"] == file_hash(folder / lt.WEIGHTS_FILE)        # the DiT's latents are this vae's
    (_, _), (xh, yh) = split_digits()
    z = lt.encode_scaled(vae, xh[:100])
    assert tuple(z.shape) == (100, 4, 4, 4) and 0.7 < float(z.std()) < 1.3
    images = lt.decode_scaled(vae, z)
    assert tuple(images.shape) == (100, 1, 32, 32)
    assert accuracy(load_classifier(), pool_to_digits(images.numpy()), yh[:100]) >= 0.95
    with torch.no_grad():                                                 # the DiT runs on these latents
        v = dit(z[:4], torch.full((4,), 0.5), torch.full((4,), 7), torch.tensor(yh[:4]), 8)
    assert v.shape == z[:4].shape and torch.isfinite(v).all()


def test_builtin_names_and_vae_paths():
    from odelt.models.checkpoint import builtin_path, builtin_vae_path

    assert builtin_path("digits-latent").name == "digits_latent.safetensors"
    with pytest.raises(CheckpointError, match="has no autoencoder; expected one of \\['digits-latent'\\]"):
        builtin_vae_path("digits")
    with pytest.raises(CheckpointError, match="unknown builtin model 'nope'; expected one of .*'digits-latent'"):
        builtin_vae_path("nope")
    with pytest.raises(CheckpointError, match="unknown builtin model"):
        builtin_path("../weights/digits")
    for other_spelling in ("digits_latent", "digits-classifier"):     # files, but not builtin model names
        with pytest.raises(CheckpointError, match=f"unknown builtin model '{other_spelling}'"):
            builtin_path(other_spelling)


def test_vae_for_source_is_the_builtins_own_autoencoder():
    from odelt.models.checkpoint import builtin_path, builtin_vae_path, vae_for_source

    assert vae_for_source("builtin:digits-latent") == ("sd", str(builtin_vae_path("digits-latent")))
    assert vae_for_source("builtin:digits") is None                       # a pixel model: no decoder stage
    assert vae_for_source(builtin_path("digits-latent")) is None          # a file does not say its VAE: --vae



def test_cli_export_of_the_latent_builtin_brings_its_autoencoder(tmp_path, run_cli):
    from odelt.bundle.bundle import open_bundle
    from odelt.models.checkpoint import builtin_vae_path

    res = run_cli(["export", "builtin:digits-latent", "--out", tmp_path / "b", "--lengths", "8"])
    assert res.code == 0, res.err
    info = open_bundle(tmp_path / "b").decoder()
    assert (info.kind, info.source, info.image) == ("sd", str(builtin_vae_path("digits-latent")), (1, 32, 32))


def test_cli_trains_the_vae_then_a_dit_on_its_latents(tmp_path, run_cli):
    from safetensors import safe_open

    from odelt.fileio import file_hash
    from odelt.models import load_checkpoint

    vae_dir, ck = tmp_path / "vae", tmp_path / "dit.safetensors"
    res = run_cli(["train-vae", "--steps", "2", "--batch-size", "4", "--seed", "3", "--out", vae_dir])
    assert res.code == 0 and "scaling_factor" in res.out and "on reconstructions" in res.out, res.err
    vae = lt.load_vae(vae_dir)
    assert f"scaling_factor {float(vae.config.scaling_factor):.5f}" in res.out
    res = run_cli(["train", "--preset", "digits-latent", "--vae", vae_dir, "--steps", "2", "--batch-size", "8",
                   "--out", ck])
    assert res.code == 0 and "trained 2 steps" in res.out, res.err
    assert load_checkpoint(ck).config == PRESETS["digits-latent"]
    with safe_open(str(ck), framework="pt") as f:
        meta = f.metadata()
    assert meta["vae_hash"] == file_hash(vae_dir / lt.WEIGHTS_FILE)
    assert json.loads(meta["train_config"])["seed"] == 0
