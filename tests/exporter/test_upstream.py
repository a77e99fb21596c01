"""The upstream JAX fixture: export its pickle and match both PyTorch and the JAX outputs."""

import numpy as np
import pytest

from odelt.bundle import open_bundle, run_chain
from odelt.exporter.export import ExportOptions, export_source
from odelt.exporter.verify import VerifyOptions, cpu_session, verify_bundle
from odelt.models.config_io import read_config_file


def test_upstream_pickle_export_matches_pytorch_and_jax(jax_small, tmp_path):
    ckpt, _, cases, _ = jax_small
    config = read_config_file(ckpt.parent / "meta.json")
    out = tmp_path / "up"
    export_source(str(ckpt), out, ExportOptions(layouts=("segments", "per-length")), config)
    report = verify_bundle(out, VerifyOptions(cases=1))
    assert report["ok"] and report["max_abs_err"] < 1e-4
    assert report["weight_bytes"]["segments"] <= 1.05 * report["param_bytes"]

    man = open_bundle(out)
    sessions = {n: cpu_session(man.graph_path(n)) for n in man.graphs}
    run = lambda g, f: dict(zip([o.name for o in sessions[g.name].get_outputs()],  # noqa: E731
                                sessions[g.name].run(None, f)))
    feed = {"x": np.ascontiguousarray(cases["x"].transpose(0, 3, 1, 2)), "t": cases["t"],
            "dt_base": cases["dt_base"].astype(np.int32), "y": cases["y"].astype(np.int32)}
    for layout in man.layouts:
        for length in (2, 4):
            got = run_chain(man, length, feed, run, layout).transpose(0, 2, 3, 1)     # NCHW -> NHWC
            assert np.abs(got - cases[f"out_l{length}"]).max() < 1e-5, (layout, length)


def test_builtin_digits_export_matches_pytorch(tmp_path):
    from odelt.models.checkpoint import WEIGHTS_DIR

    if not (WEIGHTS_DIR / "digits.safetensors").is_file():
        pytest.skip("builtin:digits is not trained yet")
    out = tmp_path / "digits"
    export_source("builtin:digits", out, ExportOptions(layouts=("segments", "per-length")))
    report = verify_bundle(out, VerifyOptions(cases=1))
    assert report["ok"] and report["max_abs_err"] < 1e-4
    assert set(report["per_length"]["segments"]) == {"2", "4", "6", "8"}
    assert report["weight_bytes"]["segments"] <= 1.05 * report["param_bytes"]
