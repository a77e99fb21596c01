"""A new user's upstream config whose depth_min is not a multiple of depth_group, through the command
line: export with the default lengths -> verify -> quantize (fp16, int8) -> build (ONNX Runtime,
TensorRT-RTX) -> generate below the first group end and at a mid-group length, against the PyTorch
reference sampler on the same noise."""

import dataclasses
import json

import numpy as np
import pytest

from odelt.bundle.bundle import open_bundle
from odelt.models import save_checkpoint
from odelt.ode.heuristics import resolve_schedule
from odelt.runtime.reference import torch_sample
from odelt.runtime.sampler import make_labels, make_noise
from tests.models_zoo import TINY, random_model

pytestmark = pytest.mark.integration        # export -> quantize -> build -> generate on the CLI

# depth 6, groups of 4, depth_min 2: trained lengths 2 and 6, the one group end 4. Length 2 has no
# live block (V = 0); length 6 ends mid-group (blocks 4 and 5 are dead).
UPSTREAM = dataclasses.replace(TINY, in_channels=2, out_channels=2, input_size=4, hidden_size=16, depth=6,
                               depth_group=4, depth_min=2, num_classes=3, frequency_embedding_size=32)
SCHEDULE = "uniform:heun:3"
FAST_CALIB = ["--calib-samples", "2", "--eval-samples", "2", "--calib-schedule", "uniform:euler:2"]


def _generate(run_cli, bundle, out, length, *extra):
    res = run_cli(["generate", bundle, "--schedule", SCHEDULE, "--length", length, "-n", "3", "--batch", "2",
                   "--seed", "5", "--out", out, "--save-array", *extra])
    assert res.code == 0, res.err
    return np.load(out.with_suffix(".npy"))


def test_upstream_config_with_an_odd_depth_min_runs_every_stage(run_cli, tmp_path):
    assert (UPSTREAM.lengths, UPSTREAM.group_ends, UPSTREAM.export_lengths) == ((2, 6), (4,), (2, 4, 6))
    dit = random_model(UPSTREAM, seed=3, std=0.3)
    ckpt, bundle = tmp_path / "up.safetensors", tmp_path / "bundle"
    save_checkpoint(dit, ckpt)

    res = run_cli(["export", ckpt, "--out", bundle, "--layout", "both", "--batch", "1:2:4"])
    assert res.code == 0, res.err
    m = open_bundle(bundle)
    assert m.lengths == (2, 4, 6)
    assert [g.name for g in m.chain(2, "segments")] == ["cond", "head0"]
    assert [g.name for g in m.chain(6, "segments")] == ["cond", "blocks_0-3", "head"]
    assert m.graph("length_2").blocks == () and m.graph("length_6").blocks == (0, 1, 2, 3)

    res = run_cli(["verify", bundle, "--json", "--cases", "1"])
    assert res.code == 0, res.err
    report = json.loads(res.out)
    assert report["ok"] and report["max_abs_err"] <= 1e-5
    assert {layout: sorted(errs) for layout, errs in report["per_length"].items()} == {
        "segments": ["2", "4", "6"], "per-length": ["2", "4", "6"]}

    for precision in ("fp16", "int8"):
        res = run_cli(["quantize", bundle, "--precision", precision, *FAST_CALIB])
        assert res.code == 0, res.err
    m = open_bundle(bundle)
    # graphs with no live block have no token path: nothing to convert, the variants keep their FP32 files
    for precision in ("fp16", "int8"):
        changed = {name for name, g in m.variant(precision)["graphs"].items() if g["changed"]}
        assert changed == {"blocks_0-3", "head", "length_4", "length_6"} - ({"head"} if precision == "int8" else set())

    res = run_cli(["build", bundle, "--backend", "ort"])
    assert res.code == 0, res.err
    assert set(open_bundle(bundle).engine_set("ort-fp32")["graphs"]) == set(m.graphs)
    if _has_rtx():
        # FP32 only: the graphs new here (head0, length_2) are FP32 files in every variant (see above)
        res = run_cli(["build", bundle, "--backend", "tensorrt-rtx", "--opt-level", "0"])
        assert res.code == 0, res.err
        built = open_bundle(bundle).engine_set("tensorrt-rtx-portable-fp32")["built"]["graphs"]
        assert set(built) == set(m.graphs) and all(g["plan_bytes"] > 0 for g in built.values())

    res = run_cli(["triton", bundle, "--out", tmp_path / "repo", "--sampler", "bls"])   # one model per graph
    assert res.code == 0, res.err
    head0 = (tmp_path / "repo" / "odelt_head0" / "config.pbtxt").read_text()
    assert '"final_mod"' in head0 and '"V"' not in head0 and "max_batch_size: 4" in head0

    x0, y = make_noise(5, 3, (2, 4, 4)), make_labels(3, UPSTREAM.num_classes)
    for length in (2, 6):
        ref = torch_sample(dit, resolve_schedule(SCHEDULE, length), x0, y)
        assert np.abs(ref - x0).max() > 0.1                   # the velocity moved the samples
        for layout in ("segments", "per-length"):
            got = _generate(run_cli, bundle, tmp_path / f"g{length}{layout}.png", length, "--layout", layout)
            np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0, err_msg=f"length {length} {layout}")
        low = _generate(run_cli, bundle, tmp_path / f"i{length}.png", length, "--precision", "int8")
        # INT8 error depends on the CPU's integer kernels (AVX2 without VNNI saturates u8*s8 pairs):
        # bound it relative to the sample's spread, which a broken graph (error ~ the spread) fails.
        rel = float(np.sqrt(np.mean((low - ref) ** 2) / np.mean(ref ** 2)))
        assert rel < 0.05, (length, rel)


def _has_rtx() -> bool:
    try:
        import tensorrt_rtx  # noqa: F401
    except ImportError:
        return False
    return True

