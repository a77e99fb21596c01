"""Export: parity with PyTorch, weight sharing, dead blocks, opset 16, atomic bundles."""

import hashlib
import json
import os
import signal
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from odelt.errors import BundleError, ConfigError, ExportError
from odelt.bundle import open_bundle
from odelt.exporter import onnx_utils
from odelt.exporter.export import ExportOptions, export_bundle
from odelt.exporter.verify import VerifyOptions, duplicate_initializers, verify_bundle
from odelt.exporter.wrappers import unpatchify
from tests.bundles import flip_last_byte

from .conftest import TINY, random_model

FAST = VerifyOptions(cases=2)


def test_both_layouts_match_pytorch(tiny_bundle):
    report = verify_bundle(tiny_bundle, FAST)
    assert report["ok"] and report["max_abs_err"] < 1e-4
    assert set(report["per_length"]) == {"segments", "per-length"}
    assert set(report["per_length"]["segments"]) == {"2", "4"}
    assert report["batch_sizes"] == [1, 3]
    assert len(report["checked_graphs"]) == 6


def test_segment_weights_exist_once(tiny_bundle):
    report = verify_bundle(tiny_bundle, VerifyOptions(cases=1))
    w, params = report["weight_bytes"], report["param_bytes"]
    assert w["segments"] <= 1.05 * params
    assert w["segments_without_conditioning"] < w["segments"]
    assert w["per-length"] > w["segments"]             # the prefix is stored again per length
    assert report["duplicate_initializers"] == 0


def _digests(arrays):
    """Bytes of each array and of its transpose (exporters store Linear weights transposed)."""
    out = set()
    for a in arrays:
        for v in (a, a.T):
            out.add(hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest())
    return out


def _bundle_digests(root):
    out = set()
    for path in sorted(root.rglob("*.onnx")):
        for t in onnx.load(str(path)).graph.initializer:
            out.add(hashlib.sha256(np.ascontiguousarray(numpy_helper.to_array(t)).tobytes()).hexdigest())
    return out


def test_dead_blocks_never_reach_a_graph(tiny_bundle):
    model = random_model()                            # the same weights as tiny_ckpt
    dead = _digests(p.detach().numpy() for p in model.blocks[4].parameters())
    live = _digests(p.detach().numpy() for p in model.blocks[3].parameters() if p.ndim == 2)
    found = _bundle_digests(tiny_bundle)
    assert not dead & found
    assert live & found                               # the check can see block weights at all


def test_conditioning_is_hoisted_out_of_chunks(tiny_bundle):
    model = random_model()
    adaln = _digests(blk.adaLN.weight.detach().numpy() for blk in model.blocks[:4])
    man = open_bundle(tiny_bundle)
    for name, g in man.graphs.items():
        digests = {hashlib.sha256(np.ascontiguousarray(numpy_helper.to_array(t)).tobytes()).hexdigest()
                   for t in onnx.load(str(man.graph_path(name))).graph.initializer}
        assert bool(adaln & digests) == (g.kind in ("conditioning", "length")), name


def test_opset16_has_no_layernorm_and_matches(cfg_bundle):
    man = open_bundle(cfg_bundle)
    assert man.opset == 16
    for name in man.graphs:
        model = onnx.load(str(man.graph_path(name)))
        assert "LayerNormalization" not in onnx_utils.op_types(model)
        assert model.opset_import[0].version == 16


def test_opset17_uses_layernorm(tiny_bundle):
    man = open_bundle(tiny_bundle)
    assert "LayerNormalization" in onnx_utils.op_types(onnx.load(str(man.graph_path("blocks_0-1"))))


def test_cfg_matches_pytorch_guidance(cfg_bundle):
    report = verify_bundle(cfg_bundle, FAST)           # reference: two PyTorch calls, mixed per row
    assert report["ok"] and report["cfg"]
    man = open_bundle(cfg_bundle)
    assert [t.name for t in man.graph("head").inputs] == ["V", "final_mod", "cfg_scale"]


def test_unpatchify_matches_the_model():
    model = random_model()
    tokens = torch.randn(2, TINY.num_tokens, TINY.patch_size ** 2 * TINY.out_channels)
    assert torch.equal(unpatchify(tokens, 2, 1, 4), model.unpatchify(tokens))


def test_wrong_attention_scale_would_be_caught(tiny_bundle):
    """The 1/head_dim scale survives export: a 1/sqrt(head_dim) model differs well beyond 1e-4."""
    from odelt.bundle.chain import run_chain
    from odelt.exporter.verify import random_step_inputs

    man = open_bundle(tiny_bundle)
    import onnxruntime as ort
    sess = {n: ort.InferenceSession(str(man.graph_path(n))) for n in man.graphs}
    run = lambda g, f: dict(zip([o.name for o in sess[g.name].get_outputs()], sess[g.name].run(None, f)))  # noqa
    feed = random_step_inputs(man, 2, np.random.default_rng(0), 1)
    got = run_chain(man, 4, feed, run)
    model = random_model()
    args = [torch.from_numpy(feed[k]) for k in ("x", "t", "dt_base", "y")]
    with torch.no_grad():
        ref = model(*args, 4).numpy()
        for blk in model.blocks:                      # rescale q by sqrt(hd): 1/hd -> 1/sqrt(hd)
            blk.attn.q.weight.mul_(TINY.head_dim ** 0.5)
            blk.attn.q.bias.mul_(TINY.head_dim ** 0.5)
        wrong = model(*args, 4).numpy()
    assert np.abs(got - ref).max() < 1e-5
    assert np.abs(got - wrong).max() > 1e-3


def test_ignore_dt_model_keeps_dt_base_input(tmp_path):
    cfg = TINY.__class__(**{**TINY.to_dict(), "ignore_dt": True})
    man = export_bundle(random_model(cfg), tmp_path / "b", ExportOptions(layouts=("segments", "per-length")))
    for name in ("cond", "length_2"):
        graph = onnx.load(str(man.graph_path(name))).graph
        assert "dt_base" in [i.name for i in graph.input]


def test_external_data_bundle(tiny_ckpt, tmp_path):
    from odelt.exporter.export import export_source

    man = export_source(str(tiny_ckpt), tmp_path / "ext", ExportOptions(external_data=True, lengths=(4,)))
    assert (tmp_path / "ext" / "segments" / "blocks_0-3.onnx.data").is_file()
    assert man.graph_file("blocks_0-3").external_data == "segments/blocks_0-3.onnx.data"
    assert "segments/blocks_0-3.onnx.data" in man.files
    assert verify_bundle(tmp_path / "ext", VerifyOptions(cases=1))["ok"]


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_save(model, path, external):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real_save(model, path, external)

    real_save = onnx_utils.save_graph
    monkeypatch.setattr(onnx_utils, "save_graph", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        export_bundle(random_model(), tmp_path / "b", ExportOptions())
    assert sorted(os.listdir(tmp_path)) == []


KILL_MIDWAY = """
import os, signal, sys
from odelt.exporter import onnx_utils
from odelt.exporter.export import ExportOptions, export_bundle
sys.path.insert(0, {tests!r})
from exporter.conftest import random_model
real = onnx_utils.save_graph
def save_then_die(model, path, external):
    real(model, path, external)
    os.kill(os.getpid(), signal.SIGKILL)       # killed after the first graph is on disk
onnx_utils.save_graph = save_then_die
export_bundle(random_model(), {out!r}, ExportOptions())
"""


def test_killed_export_leaves_no_bundle_and_is_cleaned_up(tmp_path):
    out = tmp_path / "b"
    tests = os.path.dirname(os.path.dirname(__file__))
    proc = subprocess.run([sys.executable, "-c", KILL_MIDWAY.format(tests=tests, out=str(out))])
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    leftovers = list(tmp_path.iterdir())
    assert all(".partial-" in p.name and not (p / "manifest.json").exists() for p in leftovers)
    export_bundle(random_model(), out, ExportOptions(lengths=(2,)))   # the next export cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "b"
    export_bundle(random_model(), out, ExportOptions(lengths=(2,)))
    with pytest.raises(ExportError, match="--force"):
        export_bundle(random_model(), out, ExportOptions(lengths=(4,)))
    export_bundle(random_model(), out, ExportOptions(lengths=(4,), force=True))
    assert open_bundle(out).lengths == (4,)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an odelt bundle"):
        export_bundle(random_model(), other, ExportOptions(force=True))
    assert (other / "keep.txt").read_text() == "mine"


def test_empty_output_folder_is_fine(tmp_path):
    (tmp_path / "b").mkdir()
    export_bundle(random_model(), tmp_path / "b", ExportOptions(lengths=(2,)))
    assert (tmp_path / "b" / "manifest.json").is_file()


@pytest.mark.parametrize("kwargs,msg", [({"opset": 12}, "unsupported opset"), ({"layouts": ("fancy",)}, "layout"),
                                        ({"lengths": (9,)}, "length")])
def test_bad_options(tmp_path, kwargs, msg):
    with pytest.raises(ConfigError, match=msg):
        export_bundle(random_model(), tmp_path / "b", ExportOptions(**kwargs))
    assert not (tmp_path / "b").exists()


def test_tampered_bundle_is_refused(tiny_ckpt, tmp_path):
    from odelt.exporter.export import export_source

    out = tmp_path / "b"
    export_source(str(tiny_ckpt), out, ExportOptions(lengths=(2,)))
    path = out / "segments" / "head.onnx"
    flip_last_byte(path)
    with pytest.raises(BundleError, match="head.onnx was modified"):
        open_bundle(out)
    with pytest.raises(BundleError, match="was modified"):
        verify_bundle(out)


def test_manifest_records_io_and_chains(tiny_bundle):
    data = json.loads((tiny_bundle / "manifest.json").read_text())
    assert data["format"] == "odelt-bundle/1" and data["opset"] == 17
    assert data["chains"]["segments"]["4"] == ["cond", "blocks_0-1", "blocks_2-3", "head"]
    x = data["graphs"]["blocks_0-1"]["inputs"][0]
    assert x == {"name": "x", "dtype": "float32", "shape": ["batch", 1, 8, 8]}
    assert set(data["files"]) == {g["file"] for g in data["graphs"].values()}
    assert data["model"]["source_hash"] and data["model"]["config"]["depth"] == 5
    assert duplicate_initializers(open_bundle(tiny_bundle)) == 0


def test_newest_supported_opset(tiny_ckpt, tmp_path):
    from odelt.exporter.export import export_source

    export_source(str(tiny_ckpt), tmp_path / "b", ExportOptions(opset=20, lengths=(4,)))
    assert verify_bundle(tmp_path / "b", VerifyOptions(cases=1))["ok"]
