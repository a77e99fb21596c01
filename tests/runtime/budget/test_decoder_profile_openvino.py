"""`odelt-export profile B --backend openvino` times a latent bundle's decoder with OpenVINO's
compiled decoder (the one `generate --backend openvino` opens), and the profile says so; an ONNX
Runtime profile of the same bundle says ort."""

from __future__ import annotations

import pytest

pytest.importorskip("openvino", reason="OpenVINO (the `openvino` extra) is not installed")

from odelt.bundle.bundle import open_bundle  # noqa: E402
from odelt.runtime.budget.profile import load_profile, profile_decoders  # noqa: E402


def test_profile_times_the_decoder_with_openvinos_decoder(tmp_path, run_cli, monkeypatch):
    from odelt.engines.build import BuildRequest, build_bundle
    from odelt.runtime.backends import decoder as decoder_mod
    from tests.latent.vae_files import export_latent_bundle

    root = export_latent_bundle(tmp_path / "latent", kinds=("sd",)).root
    build_bundle(root, BuildRequest(backend="openvino"))
    opened: list[str] = []                      # which decoder classes the profile opened (a spy, not a fake)
    real = decoder_mod.open_decoder

    def spy(*args, **kwargs):
        dec = real(*args, **kwargs)
        opened.append(type(dec).__name__)
        return dec
    monkeypatch.setattr(decoder_mod, "open_decoder", spy)
    r = run_cli(["profile", root, "--backend", "openvino", "--batch", "1", "--repeats", "2", "--decoder-repeats", "1"])
    assert r.code == 0, r.err
    assert "fp32 batch 1: decoding the batch (ms, median) sd:" in r.out
    cell = load_profile(open_bundle(root), backend="openvino")["decoders"]["fp32"]["1"]["sd"]
    assert cell["decoder_backend"] == "openvino" and cell["engine_set"] == "openvino-cpu-fp32"
    assert cell["median_ms"] > 0 and opened == ["OvDecoder"]
    ort = profile_decoders(open_bundle(root), ("fp32",), (1,), 1)["fp32"]["1"]["sd"]
    assert ort["decoder_backend"] == "ort" and "engine_set" not in ort and opened[-1] == "OrtDecoder"
