"""A manifest is hostile input: every path it names stays inside the bundle (symlinks included),
and every key is checked once at open, with one line naming the key."""

from __future__ import annotations

import os

import pytest

from odelt.bundle.bundle import open_bundle
from odelt.errors import BundleError
from tests.bundles import edit_by_hand, private_copy


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    return private_copy(tiny_bundle, tmp_path / "b")


def _refused(root, change, *expected, verify=False):
    edit_by_hand(root, change) if change else None
    with pytest.raises(BundleError) as e:
        open_bundle(root, verify=verify)
    msg = str(e.value)
    assert "\n" not in msg
    for text in expected:
        assert text in msg, msg
    return msg


def test_the_tiny_bundle_passes(bundle):
    open_bundle(bundle, verify=True)


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.onnx", "segments/../../x.onnx", "~/x.onnx"])
def test_graph_paths_that_leave_the_bundle_are_refused(bundle, path):
    def change(d):
        d["graphs"]["cond"]["file"] = path
    msg = _refused(bundle, change, "graphs.cond.file", repr(path))
    assert "leaves the bundle" in msg


def test_a_symlink_out_of_the_bundle_is_refused(bundle, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "cond.onnx").write_bytes((bundle / "segments" / "cond.onnx").read_bytes())
    (bundle / "segments" / "cond.onnx").unlink()
    os.symlink(outside / "cond.onnx", bundle / "segments" / "cond.onnx")
    _refused(bundle, None, "graphs.cond.file", "outside the bundle")
    os.unlink(bundle / "segments" / "cond.onnx")                     # a whole folder linked out
    (bundle / "segments").rename(tmp_path / "segs")
    os.symlink(tmp_path / "segs", bundle / "segments")
    _refused(bundle, None, "outside the bundle")


def test_file_records_and_engine_paths_are_contained(bundle):
    def record(d):
        d["files"]["/etc/hostname"] = dict(next(iter(d["files"].values())))
    data = (bundle / "manifest.json").read_text()
    import json
    d = json.loads(data)
    record(d)
    (bundle / "manifest.json").write_text(json.dumps(d))
    _refused(bundle, None, "files./etc/hostname", "leaves the bundle")
    (bundle / "manifest.json").write_text(data)

    def engine(d):
        d["engines"] = {"e": {"backend": "ort", "dir": "engines/e", "graphs": {"cond": "../../cond.ort"}}}
    _refused(bundle, engine, "engines.e.graphs.cond", "leaves the bundle")


@pytest.mark.parametrize("key,change,expected", [
    ("lengths", lambda d: d.update(lengths=["2", "4"]), "lengths.0: expected an integer in 1..5, found '2'"),
    ("batch", lambda d: d["batch"].update(max="one"), "batch.max: expected an integer in 1..65536, found 'one'"),
    ("batch-order", lambda d: d["batch"].update(min=9), "batch: expected min <= opt <= max"),
    ("opset", lambda d: d.update(opset=None), "opset: expected an integer in 7..30, found None"),
    ("cfg", lambda d: d.update(cfg="yes"), "cfg: expected true or false"),
    ("layouts", lambda d: d.update(layouts="segments"), "layouts: expected a list"),
    ("graphs", lambda d: d.update(graphs=[]), "graphs: expected an object"),
    ("chain-ref", lambda d: d["chains"]["segments"]["2"].append("nosuch"),
     "chains.segments.2.3: expected a segments graph listed under graphs, found 'nosuch'"),
    ("chain-lengths", lambda d: d["chains"]["per-length"].pop("4"), "chains.per-length: expected one chain per length"),
    ("chain-flow", lambda d: d["chains"]["segments"]["4"].pop(1), "(blocks_2-3 needs ['h', 'V'])"),
    ("chain-end", lambda d: d["chains"]["segments"]["4"].pop(), "chains.segments.4: expected a last graph that outputs"),
    ("chain-input", lambda d: d["graphs"]["cond"]["inputs"][0].update(name="time"), "cond needs ['time']"),
    ("shape", lambda d: d["graphs"]["cond"]["inputs"][0].update(shape=["batch", -1]), "graphs.cond.inputs.0.shape.1"),
    ("dtype", lambda d: d["graphs"]["cond"]["inputs"][0].update(dtype="object"), "graphs.cond.inputs.0.dtype"),
    ("config", lambda d: d["model"]["config"].update(hidden_size="32"), "model.config: invalid model config"),
    ("table-nan", lambda d: d.update(tables={"t": {"file": "segments/cond.onnx", "t": [float("nan")]}}),
     "tables.t.t.0: expected finite numbers"),
    ("variant-ref", lambda d: d.update(precisions={"fp16": {"graphs": {"nosuch": {"file": "x.onnx"}}}}),
     "precisions.fp16.graphs: expected graphs listed under graphs"),
    ("decoder-ref", lambda d: d.update(decoders={"sd": {"graph": "cond"}}), "decoders.sd.graph"),
    ("unrecorded", lambda d: d["graphs"]["cond"].update(external_data="segments/cond.onnx.data"),
     "graphs.cond.external_data: expected a file listed under files"),
])
def test_wrong_keys_are_one_line_naming_the_key(bundle, key, change, expected):
    _refused(bundle, change, expected)


def test_a_manifest_without_file_records_is_refused_by_every_opener(bundle, run_cli, tmp_path):
    import json
    d = json.loads((bundle / "manifest.json").read_text())
    d.pop("files")
    (bundle / "manifest.json").write_text(json.dumps(d))
    _refused(bundle, None, "files: expected the records of the bundle's files")
    for argv in (["generate", bundle, "-n", "1", "--schedule", "uniform:euler:1", "--out", tmp_path / "g.png"],
                 ["inspect", bundle], ["plan", bundle, "--budget-ms", "5"]):
        assert "files: expected the records" in run_cli(argv).error_line()
    assert not (tmp_path / "g.png").exists()


def test_io_specs_that_contradict_the_graph_are_refused_on_verify(bundle, run_cli):
    def change(d):
        d["graphs"]["cond"]["outputs"][0]["shape"] = ["batch", 191]
    _refused(bundle, change, "graphs.cond.outputs: mod0 is float32 ['batch', 191] in the manifest", verify=True)
    line = run_cli(["inspect", bundle]).error_line()
    assert "graphs.cond.outputs" in line

    def dtype(d):
        d["graphs"]["cond"]["outputs"][0]["shape"] = ["batch", 192]
        d["graphs"]["cond"]["inputs"][0]["dtype"] = "int32"
    _refused(bundle, dtype, "t is int32", "float32", verify=True)
