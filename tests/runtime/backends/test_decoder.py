"""`generate` on latent bundles: the decoder stage after sampling (numpy runtime over ONNX Runtime),
--latents, --decoder, PNG grids of the decoded images, and the decoder runner's own checks."""

from __future__ import annotations

import numpy as np
import pytest

from odelt.errors import RuntimeFailure
from odelt.runtime.backends.decoder import open_decoder
from odelt.runtime.generate import GenerateOptions, generate_from_bundle
from tests.latent.vae_files import export_latent_bundle

FAST = dict(schedule="uniform:euler:2", n=3, batch=2, threads=1)


@pytest.fixture(scope="module")
def latent_bundle(tmp_path_factory):
    return export_latent_bundle(tmp_path_factory.mktemp("latent"))


def _diffusers_decode(bundle, kind, latents):
    import torch

    from odelt.exporter.decoder import vae_for_bundle

    return vae_for_bundle(bundle, kind).decode(torch.from_numpy(latents)).numpy()


def test_generate_decodes_with_the_default_decoder(latent_bundle):
    res = generate_from_bundle(latent_bundle.root, GenerateOptions(**FAST))
    assert res.latents.shape == (3, 4, 8, 8) and res.images.shape == (3, 3, 16, 16)
    assert res.decoded.kind == "sd" and res.decoded.seconds > 0
    assert np.abs(res.images - _diffusers_decode(latent_bundle, "sd", res.latents)).max() <= 1e-4
    latents = generate_from_bundle(latent_bundle.root, GenerateOptions(**FAST, decode=False))
    assert latents.decoded is None and latents.latents is None
    np.testing.assert_array_equal(latents.images, res.latents)     # the same samples, not decoded


def test_decoder_option_picks_taesd(latent_bundle):
    res = generate_from_bundle(latent_bundle.root, GenerateOptions(**FAST, decoder="taesd"))
    assert res.decoded.kind == "taesd"
    assert np.abs(res.images - _diffusers_decode(latent_bundle, "taesd", res.latents)).max() <= 1e-4


def test_cli_writes_a_grid_of_decoded_images(latent_bundle, tmp_path, run_cli):
    from PIL import Image

    out = tmp_path / "g.png"
    res = run_cli(["generate", latent_bundle.root, "-n", "4", "--batch", "2", "--schedule", "uniform:euler:2",
                   "--threads", "1", "--out", out, "--save-array"])
    assert res.code == 0, res.err
    assert "decoded with sd (fp32)" in res.out and "images 3x16x16 from latents 4x8x8" in res.out
    img = np.asarray(Image.open(out))
    saved = np.load(out.with_suffix(".npy"))
    assert saved.shape == (4, 3, 16, 16)
    # a 2x2 grid of 16-pixel images with 1-pixel padding, upscaled 64 // 16 = 4 times
    assert img.shape == (4 * (2 * 17 + 1), 4 * (2 * 17 + 1), 3)
    first = np.clip((np.clip(saved[0], -1, 1) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    np.testing.assert_array_equal(img[4:4 + 64:4, 4:4 + 64:4], first)          # from the clamped image
    res = run_cli(["generate", latent_bundle.root, "-n", "2", "--batch", "2", "--schedule", "uniform:euler:2",
                   "--threads", "1", "--out", tmp_path / "l.png", "--latents", "--save-array"])
    assert res.code == 0 and "decoded" not in res.out
    assert np.load(tmp_path / "l.npy").shape == (2, 4, 8, 8)


@pytest.mark.parametrize("argv,msg", [
    (["--decoder", "vq"], "no 'vq' decoder; expected one of ['sd', 'taesd']"),
    (["--decoder", "sd", "--latents"], "expected --decoder or --latents, found both"),
])
def test_bad_decoder_options_are_one_line(latent_bundle, tmp_path, run_cli, argv, msg):
    line = run_cli(["generate", latent_bundle.root, "--out", tmp_path / "g.png", *argv]).error_line()
    assert msg in line
    assert list(tmp_path.iterdir()) == []


def test_decoder_on_a_pixel_bundle_is_refused(tiny_bundle, tmp_path, run_cli):
    line = run_cli(["generate", tiny_bundle.root, "--out", tmp_path / "g.png", "--decoder", "sd"]).error_line()
    assert "no decoder stage" in line


def test_decoder_runner_checks_shapes_and_finiteness(latent_bundle):
    with open_decoder(latent_bundle, "sd") as dec:
        with pytest.raises(RuntimeFailure, match=r"expected NCHW latents \(N, 4, 8, 8\), found shape \(2, 8, 8, 4\)"):
            dec.decode(np.zeros((2, 8, 8, 4), np.float32))
        with pytest.raises(RuntimeFailure, match="non-finite pixels"):
            dec.decode(np.full((1, 4, 8, 8), np.nan, np.float32))
        one, many = dec.decode(np.ones((3, 4, 8, 8), np.float32), 1), dec.decode(np.ones((3, 4, 8, 8), np.float32))
        np.testing.assert_allclose(one, many, atol=1e-6)     # chunking does not change the result
    with pytest.raises(RuntimeFailure, match="outside its `with` block"):
        dec.decode(np.ones((1, 4, 8, 8), np.float32))


def test_an_int8_run_reports_its_decoders_own_precision(tmp_path, run_cli):
    from odelt.calibration.quantize import QuantizeOptions, quantize_bundle

    bundle = export_latent_bundle(tmp_path, kinds=("sd",))
    quantize_bundle(bundle.root, QuantizeOptions("int8", calib_samples=1, eval_samples=2, flavour="trt",
                                                 schedules=("uniform:euler:2",)))
    res = run_cli(["generate", bundle.root, "-n", "2", "--batch", "2", "--schedule", "uniform:euler:2",
                   "--threads", "1", "--precision", "int8", "--out", tmp_path / "g.png"])
    assert res.code == 0, res.err
    assert "decoded with sd (fp16)" in res.out          # the int8 "trt" variant's decoder is FP16, not INT8
