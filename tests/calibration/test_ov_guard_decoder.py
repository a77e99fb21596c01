"""The OpenVINO accuracy guard on a latent bundle (builtin:digits-latent): its decoder graph, built
at bf16, is held to the FP32 decoder's images of the same real final latents; over the limit, the
whole decoder is rebuilt at FP32 and the set says so."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("openvino", reason="OpenVINO (the `openvino` extra) is not installed")

from odelt.bundle.bundle import open_bundle  # noqa: E402
from odelt.calibration.ov_guard import OvGuard  # noqa: E402
from odelt.engines import openvino as ove  # noqa: E402
from odelt.engines.build import BuildRequest, build_bundle, describe  # noqa: E402

FAST = dict(schedules=("uniform:euler:2",), eval_samples=2)
BF16 = BuildRequest(backend="openvino", precision="bf16")


@pytest.fixture(scope="module")
def latent_bundle(tmp_path_factory):
    from odelt.cli import main

    root = tmp_path_factory.mktemp("ov-latent") / "b"
    main(["export", "builtin:digits-latent", "--out", str(root), "--lengths", "8", "--layout", "segments"])
    return root


def _copy(src, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(src, root)
    return root


@pytest.fixture(scope="module")
def guarded(latent_bundle, tmp_path_factory):
    """(root, guard, set entry): the latent bundle with a bf16 set built through the guard."""
    root = _copy(latent_bundle, tmp_path_factory.mktemp("guarded"))
    guard = OvGuard(open_bundle(root), "bf16", **FAST)
    return root, guard, build_bundle(root, BF16, guard)


def test_the_decoder_is_guarded_and_reported(guarded):
    root, guard, entry = guarded
    graph = open_bundle(root).decoder().graph
    verdict = entry["built"]["guard"]["decoders"][graph]
    acc = verdict["accuracy"]
    assert verdict["passed"] and not verdict["kept_fp32"] and acc["finite"] and acc["samples"] >= 2
    assert 0 <= acc["rmse"] <= verdict["limit_rmse"] == 0.01
    assert acc["image_absmax_fp32"] > 0.1                         # real images, not zeros on both sides
    assert verdict["runs"] == ove.read_record(root / entry["graphs"][graph])["inference_precision"]
    assert entry["built"]["fp32_graphs"] == [] and len(guard.rounds) == 1
    assert f"{graph}: image RMSE" in describe(BF16, entry)


def test_a_decoder_over_the_limit_is_rebuilt_whole_at_fp32(latent_bundle, tmp_path):
    """A limit no decoder can meet (negative): the first round's decoder fails, the second round
    compiles it whole at FP32 (its record says so) while the DiT's graphs stay at bf16."""
    root = _copy(latent_bundle, tmp_path)
    manifest = open_bundle(root)
    graph = manifest.decoder().graph
    guard = OvGuard(manifest, "bf16", decoder_max_rmse=-1.0, **FAST)
    entry = build_bundle(root, BF16, guard)
    built = entry["built"]
    assert built["fp32_graphs"] == [graph] and len(guard.rounds) == 2
    assert [r["decoders"][graph]["passed"] for r in guard.rounds] == [False, True]
    assert built["guard"]["decoders"][graph]["kept_fp32"]
    assert "kept FP32 (whole decoder)" in built["guard"]["summary"] and "kept FP32 (whole decoder)" in describe(BF16, entry)
    rec = ove.read_record(root / entry["graphs"][graph])
    assert (rec["precision"], rec["hint"], rec["inference_precision"]) == ("fp32", "f32", "f32")
    dit = next(n for n in entry["graphs"] if n != graph)
    assert ove.read_record(root / entry["graphs"][dit])["precision"] == "bf16"
    # generation decodes through that FP32 decoder of the bf16 set
    from odelt.runtime.backends.decoder import open_decoder

    with open_decoder(open_bundle(root), precision="bf16", backend="openvino") as dec:
        assert type(dec).__name__ == "OvDecoder" and dec.engine_set == "openvino-cpu-bf16"
        latents = np.zeros((1, *dec.info.latent), np.float32)
        assert np.isfinite(dec.decode(latents)).all()


def test_bf16_plans_compose_the_decoders_guard_error(guarded, tmp_path):
    """The planner's bf16 rows of decoding plans: the FP32-decoder rows only (the set decodes with its
    own decoder), errors composed with the guard's DiT and decoder errors. The set's record is a FAKE
    saying it runs bf16 with a decoder RMSE of 0.005 (this CPU may run bf16 as f32, and the planner
    offers such a set under no name)."""
    import json
    import math
    from dataclasses import replace

    from odelt.runtime.budget.axes import across_backends
    from odelt.runtime.budget.planner import Candidate

    root = _copy(guarded[0], tmp_path)
    data = json.loads((root / "manifest.json").read_text())
    built = data["engines"]["openvino-cpu-bf16"]["built"]
    graph = open_bundle(root).decoder().graph
    built["inference_precision"] = "bf16"
    built["guard"]["decoders"][graph]["accuracy"]["rmse"] = 0.005
    (root / "manifest.json").write_text(json.dumps(data))
    m = open_bundle(root)
    base = Candidate("e2-fp32", "e2", "euler", (8, 8), "fp32", 0.1)
    cands = [replace(base, name="e2-fp32+sd", decoder="sd"),
             replace(base, name="e2-fp32+sd-fp16", decoder="sd", decoder_precision="fp16")]
    out = across_backends(cands, {"openvino": {"calls": {"fp32": {}, "bf16": {}}}}, m)
    bf16 = [c for c in out if c.precision == "bf16"]
    assert [c.name for c in bf16] == ["e2-bf16+sd@openvino"]
    dit = built["guard"]["rounds"][-1]["rmse_worst"]
    assert bf16[0].error == pytest.approx(math.sqrt(0.1 ** 2 + dit ** 2 + 0.005 ** 2))
