"""The decoder graph: ONNX Runtime against diffusers' own decode, the folded scale, the NHWC
boundary, and `export --vae` / `verify` / `inspect` on a tiny latent DiT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from odelt.errors import RuntimeFailure
from odelt.bundle.bundle import open_bundle
from odelt.exporter.decoder import DecoderGraph, decoder_spec_for, onnx_from_vae
from odelt.latent.vae import load_vae
from odelt.onnxrt import open_session
from tests.latent.vae_files import random_vae, save_folder
from tests.models_zoo import config, random_model

LATENT = config("tiny-latent")
PARITY = 1e-4


def _ort(vae, opset=17):
    spec = decoder_spec_for(vae, LATENT)
    return open_session(onnx_from_vae(vae, spec, opset)), spec


@pytest.mark.parametrize("which", ["kl", "taesd"])
@pytest.mark.parametrize("batch", [1, 2])
def test_onnx_runtime_matches_diffusers(which, batch, request):
    vae = load_vae("sd" if which == "kl" else "taesd", request.getfixturevalue(which)[1])
    session, spec = _ort(vae)
    assert spec.inputs[0].shape == ("batch", 4, 8, 8) and spec.outputs[0].shape == ("batch", 3, 16, 16)
    z = np.random.default_rng(batch).standard_normal((batch, 4, 8, 8)).astype(np.float32)
    (got,) = session.run(["image"], {"latent": z})
    want = vae.decode(torch.from_numpy(z)).numpy()          # diffusers: decode(z / scaling_factor).sample
    assert got.shape == (batch, 3, 16, 16)
    assert np.abs(got - want).max() <= PARITY
    assert np.abs(want).max() > 0.1                           # not a trivially zero output


def test_scale_is_folded_into_post_quant_conv_exactly(kl):
    vae = load_vae("sd", kl[1])
    s = vae.scaling_factor
    graph = DecoderGraph(vae).eval()
    w0 = vae.model.post_quant_conv.weight.double()
    assert torch.allclose(graph.entry.weight.double(), w0 / s, rtol=1e-7, atol=0)
    assert torch.equal(graph.entry.bias, vae.model.post_quant_conv.bias)
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        folded = graph(z)
        reference = vae.model.decode(z / s).sample
        unscaled = vae.model.decode(z).sample
    assert (folded - reference).abs().max() <= 1e-5
    assert (folded - unscaled).abs().max() > 1e-2            # the fold does something
    assert torch.equal(vae.model.post_quant_conv.weight.double(), w0)   # the reference is left as it was


def test_without_post_quant_conv_the_scale_folds_into_conv_in(tmp_path):
    model = random_vae("sd", use_post_quant_conv=False)
    vae = load_vae("sd", save_folder(model, tmp_path / "nopqc"))
    graph = DecoderGraph(vae).eval()
    assert graph.entry is None and graph.decoder.conv_in is not vae.model.decoder.conv_in
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert (graph(z) - vae.model.decode(z / vae.scaling_factor).sample).abs().max() <= 1e-5
    session, _ = _ort(vae)
    (got,) = session.run(["image"], {"latent": z.numpy()})
    assert np.abs(got - vae.decode(z).numpy()).max() <= PARITY


def test_opset_14_exports_the_attention(kl):
    vae = load_vae("sd", kl[1])
    session, _ = _ort(vae, opset=14)
    z = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    assert np.abs(session.run(["image"], {"latent": z})[0] - vae.decode(torch.from_numpy(z)).numpy()).max() <= PARITY


def test_nhwc_latents_enter_through_the_documented_transpose(kl):
    """Upstream (JAX) keeps latents NHWC and decodes z / 0.18215; our graph takes NCHW and divides
    itself: the one transpose (0, 3, 1, 2) of odelt.runtime.backends.decoder is the whole boundary."""
    from odelt.runtime.backends.decoder import image_to_nhwc, latent_from_nhwc

    vae = load_vae("sd", kl[1])
    session, _ = _ort(vae)
    nhwc = np.random.default_rng(3).standard_normal((2, 8, 8, 4)).astype(np.float32)
    (image,) = session.run(["image"], {"latent": latent_from_nhwc(nhwc)})
    # upstream's decode: NHWC latent / scale -> NCHW for the conv stack -> NHWC image (b, H, W, 3)
    upstream = vae.model.decode(torch.from_numpy(nhwc).permute(0, 3, 1, 2) / 0.18215).sample.permute(0, 2, 3, 1)
    assert np.abs(image_to_nhwc(image) - upstream.detach().numpy()).max() <= PARITY
    with pytest.raises(RuntimeFailure, match=r"expected an NHWC latent \(B, h, w, 4\), found shape \(2, 8, 8, 3\)"):
        latent_from_nhwc(nhwc[..., :3], channels=4)


@pytest.fixture(scope="module")
def latent_ckpt(tmp_path_factory):
    from odelt.models import save_checkpoint

    path = tmp_path_factory.mktemp("dit") / "latent.safetensors"
    save_checkpoint(random_model(LATENT), path)
    return path


@pytest.fixture(scope="module")
def both_bundle(latent_ckpt, kl, taesd, tmp_path_factory):
    from odelt.cli import main

    out = tmp_path_factory.mktemp("bundles") / "latent"
    main(["export", str(latent_ckpt), "--out", str(out), "--vae", f"sd:{kl[1]}", "--vae", f"taesd:{taesd[1]}"])
    return out


def test_export_writes_decoder_graphs_and_entries(both_bundle, kl):
    b = open_bundle(both_bundle, verify=True)              # every file listed and hashed
    assert sorted(b.decoders) == ["sd", "taesd"] and b.decoder().kind == "sd"
    sd = b.decoder("sd")
    assert (sd.graph, sd.scale_folded, sd.latent, sd.image) == ("decoder_sd", True, (4, 8, 8), (3, 16, 16))
    assert sd.scaling_factor == pytest.approx(0.18215) and b.decoder("taesd").scaling_factor == 1.0
    assert sd.params == sum(p.numel() for n, p in kl[0].named_parameters()
                            if n.startswith(("decoder.", "post_quant_conv.")))
    assert b.graph_path("decoder_sd").is_file() and b.graph("decoder_taesd").layout == "decoder"
    assert "decoder/decoder_sd.onnx" in b.files and "decoder/decoder_taesd.onnx" in b.files
    assert b.layouts == ("segments",) and all("decoder" not in g for c in b.chains("segments").values() for g in c)


def test_verify_and_inspect_report_the_decoders(both_bundle, run_cli):
    res = run_cli(["verify", both_bundle, "--json", "--cases", "1"])
    assert res.code == 0, res.err
    report = json.loads(res.out)
    assert report["ok"] and set(report["decoders"]) == {"sd", "taesd"}
    assert all(e <= PARITY for e in report["decoders"].values())
    assert "decoder_sd" in report["checked_graphs"]
    res = run_cli(["inspect", both_bundle])
    assert "decoder/decoder_sd.onnx" in res.out and "1/0.18215 folded into the graph" in res.out


def test_verify_notices_a_changed_vae(latent_ckpt, tmp_path, run_cli):
    folder = save_folder(random_vae("sd", seed=1), tmp_path / "vae")
    run_cli(["export", latent_ckpt, "--out", tmp_path / "b", "--vae", f"sd:{folder}"])
    save_folder(random_vae("sd", seed=2), folder)
    line = run_cli(["verify", tmp_path / "b"]).error_line()
    assert "but the bundle's decoder was exported from hash" in line
