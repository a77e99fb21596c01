"""Engines for a bundle the exporter really wrote (a tiny random DiT, both layouts)."""

import dataclasses
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from odelt.cli import main
from odelt.engines import ort as oe
from odelt.engines import tensorrt as te
from odelt.engines.platform import Platform
from odelt.bundle.bundle import open_bundle
from odelt.bundle.chain import run_chain
from odelt.exporter.export import ExportOptions, export_bundle
from odelt.bundle.iospec import BatchRange
from odelt.models import DiT

from .fake_tensorrt import make_fake_tensorrt

from tests.models_zoo import TINY


@pytest.fixture(scope="module")
def dit_bundle(tmp_path_factory):
    torch.manual_seed(0)
    model = DiT(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():      # no zero-init final layer: outputs must not be all 0
            p.copy_(torch.randn_like(p) * 0.1)
    out = tmp_path_factory.mktemp("dit") / "bundle"
    export_bundle(model, out, ExportOptions(layouts=("segments", "per-length"), batch=BatchRange(1, 2, 4)))
    return out


def _feeds(batch=2):
    rng = np.random.default_rng(1)
    return {"x": rng.standard_normal((batch, 1, 8, 8)).astype(np.float32),
            "t": rng.uniform(0, 1, batch).astype(np.float32),
            "dt_base": np.full(batch, 3, np.int32), "y": np.arange(batch, dtype=np.int32)}


def _runner(open_session):
    cache = {}

    def run(spec, inputs):
        if spec.name not in cache:
            cache[spec.name] = open_session(spec.name)
        names = [o.name for o in spec.outputs]
        return dict(zip(names, cache[spec.name].run(names, inputs)))
    return run


def test_ort_engines_reproduce_the_raw_bundle(dit_bundle):
    main(["build", str(dit_bundle), "--backend", "ort"])
    m = open_bundle(dit_bundle)
    engines = m.engine_set("ort-fp32")["graphs"]
    assert set(engines) == set(m.graphs)
    raw = _runner(lambda n: ort.InferenceSession(str(m.graph_path(n)), providers=["CPUExecutionProvider"]))
    eng = _runner(lambda n: oe.session_from_engine(dit_bundle / engines[n]))
    for layout in m.layouts:
        for length in m.lengths:
            want = run_chain(m, length, _feeds(), raw, layout)
            got = run_chain(m, length, _feeds(), eng, layout)
            assert np.abs(want).max() > 0
            # fused FastGelu / SkipLayerNormalization round differently from the op-by-op graph
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    blocks = [n for n in engines if n.startswith("blocks")][0]
    ops = {node.op_type for node in onnx.load(str(dit_bundle / engines[blocks]), load_external_data=False).graph.node}
    assert {"FastGelu", "SkipLayerNormalization"} <= ops


def test_tensorrt_profiles_come_from_the_bundle_io_spec(dit_bundle, tmp_path, monkeypatch):
    """FAKE TensorRT (see fake_tensorrt.py): checks the profiles OUR builder asks for."""
    fake = make_fake_tensorrt("10.13.3.9")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    here = Platform("10.13.3.9", "FakeGPU", "11.0", "38.4.0", "7.1")
    monkeypatch.setattr(te, "current_platform", lambda v: dataclasses.replace(here, trt_version=v))
    main(["build", str(dit_bundle), "--backend", "tensorrt", "--target", "thor",
          "--cache-dir", str(tmp_path / "cache")])
    m = open_bundle(dit_bundle)
    entry = m.engine_set("tensorrt-thor-fp32")
    assert entry["built"]["trt_version"] == "10.13.3.9" and entry["built"]["jetpack"] == "7.1"
    assert all(len(cfg.shape_ranges) == 1 for cfg in fake.fake_log["configs"])  # one profile per engine
    shapes = {}
    for cfg in fake.fake_log["configs"]:
        shapes.update(cfg.shape_ranges[0].shapes)
    assert shapes["x"] == ((1, 1, 8, 8), (2, 1, 8, 8), (4, 1, 8, 8))
    assert shapes["t"] == ((1,), (2,), (4,))
    assert len(fake.fake_log["configs"]) == len(m.graphs)
    for rel in entry["graphs"].values():
        assert te.read_manifest(dit_bundle / rel).platform == here
