"""`quantize_bundle` / `odelt-export quantize` on a tiny bundle: variants, guard, fallback, bad input."""

import json

import onnx
import pytest

from odelt.calibration import metrics
from odelt.calibration.quantize import QuantizeOptions, install_variant, quantize_bundle
from odelt.cli import main
from odelt.errors import AccuracyError, ConfigError, ExportError
from odelt.bundle import open_bundle

from tests.bundles import edit_by_hand
from tests.calibration.conftest import FAST

QDQ = {"QuantizeLinear", "DequantizeLinear"}


def _ops(path):
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _snapshot(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")), (root / "manifest.json").read_text()


def test_int8_variant_written_and_recorded(bundle):
    report = quantize_bundle(bundle, QuantizeOptions("int8", **FAST))
    manifest = open_bundle(bundle)               # every file, variant included, hash-checked
    assert manifest.precisions == ("fp32", "int8")
    assert report["flavour"] == manifest.int8_flavour == "trt"       # TensorRT's Q/DQ is the default
    assert report["metrics"]["rmse_worst"] <= 0.05 and report["fallback"] == []
    assert report["metrics"]["rmse"] > 0           # the variant really differs from FP32
    for name in ("blocks_0-1", "blocks_2-3", "length_2", "length_4"):
        path = manifest.graph_path(name, "int8")
        assert path.parent.parent.name == "int8" and QDQ <= _ops(path)
    for name in ("cond", "head"):                  # nothing to quantise: the FP32 file is shared
        assert manifest.graph_path(name, "int8") == manifest.graph_path(name)
    saved = json.loads((bundle / "int8" / "report.json").read_text())
    assert saved["metrics"]["rmse"] == pytest.approx(report["metrics"]["rmse"])
    assert not list(bundle.glob(".int8*"))         # no temp folder left behind


def test_fp16_variant_accuracy(bundle):
    report = quantize_bundle(bundle, QuantizeOptions("fp16", **FAST))
    assert 0 < report["metrics"]["rmse_worst"] <= 0.01
    path = open_bundle(bundle).graph_path("blocks_0-1", "fp16")
    inits = onnx.load(str(path)).graph.initializer
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in inits)


def test_impossible_threshold_falls_back_every_layer(segments_bundle):
    bundle = segments_bundle
    report = quantize_bundle(bundle, QuantizeOptions("int8", max_rmse=1e-12, **FAST))
    n_linears = sum(len(g["fallback_fp32"]) for g in report["graphs"].values())
    assert len(report["fallback"]) == n_linears == 24   # 6 per block, 4 blocks in two chunks
    assert [r["fallback_layers"] for r in report["rounds"]][:3] == [0, 1, 2]
    assert not report["rounds"][0]["passed"] and report["rounds"][-1]["passed"]
    manifest = open_bundle(bundle)
    assert manifest.variant("int8")["fallback"]
    assert not QDQ & _ops(manifest.graph_path("blocks_0-1", "int8"))


def test_fp16_impossible_threshold_is_an_error_and_writes_nothing(segments_bundle):
    bundle = segments_bundle
    before = _snapshot(bundle)
    with pytest.raises(AccuracyError, match="misses the accuracy limit"):
        quantize_bundle(bundle, QuantizeOptions("fp16", max_rmse=1e-12, **FAST))
    assert _snapshot(bundle) == before


def test_failure_midway_leaves_bundle_untouched(bundle, monkeypatch):
    before = _snapshot(bundle)

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(metrics, "compare", boom)
    with pytest.raises(OSError):
        quantize_bundle(bundle, QuantizeOptions("int8", **FAST))
    assert _snapshot(bundle) == before


def test_options_reject_bad_values():
    with pytest.raises(ConfigError, match="--calib-samples: expected an integer in 1..1000000, found 0"):
        QuantizeOptions("int8", calib_samples=0)
    with pytest.raises(ConfigError, match="unknown precision 'int4'"):
        QuantizeOptions("int4")
    with pytest.raises(ConfigError, match="calibration method"):
        QuantizeOptions("int8", method="mse")
    with pytest.raises(ConfigError, match="unknown INT8 flavour 'arm'; expected one of"):
        QuantizeOptions("int8", flavour="arm")


def _cli(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(["quantize", *map(str, args)])
    err = capsys.readouterr().err.strip()
    return e.value.code, err


def test_cli_errors_are_one_line(bundle, tmp_path, capsys):
    code, err = _cli(capsys, bundle, "--precision", "int8", "--calib-samples", "0")
    assert code == 1 and err == "odelt-export: error: --calib-samples: expected an integer in 1..1000000, found 0"
    code, err = _cli(capsys, tmp_path / "nowhere", "--precision", "int8")
    assert code == 1 and "not a bundle" in err and "\n" not in err
    code, err = _cli(capsys, bundle, "--precision", "int8", "--calib-schedule", "wobbly:euler:4")
    assert code == 1 and "wobbly" in err and "\n" not in err


def test_cli_quantise_twice_is_refused(bundle, capsys):
    main(["quantize", str(bundle), "--precision", "int8", "--calib-samples", "2", "--eval-samples", "2",
          "--calib-schedule", "uniform:euler:2", "--int8-flavour", "cpu"])
    out = capsys.readouterr().out
    assert "int8 (cpu flavour) variant written" in out and "RMSE" in out
    manifest = open_bundle(bundle)
    assert manifest.int8_flavour == "cpu" and manifest.variant("int8")["flavour"] == "cpu"
    graph = onnx.load(str(manifest.graph_path("blocks_0-1", "int8"))).graph
    zero_points = {i.name: i.data_type for i in graph.initializer}
    acts = [n.input[2] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert acts and all(zero_points[z] == onnx.TensorProto.UINT8 for z in acts)
    before = _snapshot(bundle)
    code, err = _cli(capsys, bundle, "--precision", "int8")
    assert code == 1 and "already has a int8 (cpu flavour) variant" in err and "\n" not in err
    assert _snapshot(bundle) == before


def test_already_quantised_graphs_are_refused(segments_bundle):
    bundle = segments_bundle
    quantize_bundle(bundle, QuantizeOptions("int8", **FAST))
    manifest = open_bundle(bundle)
    # a bundle whose "FP32" graph is really a Q/DQ graph (e.g. copied over by hand)
    fp32 = manifest.graph_path("blocks_0-1")
    fp32.write_bytes(manifest.graph_path("blocks_0-1", "int8").read_bytes())
    edit_by_hand(bundle, lambda data: data.pop("precisions"))
    with pytest.raises(ExportError, match="graph blocks_0-1 is already quantised"):
        quantize_bundle(bundle, QuantizeOptions("fp16", **FAST))


def test_a_stale_bundle_object_cannot_claim_a_taken_precision(bundle, tmp_path):
    """Two quantize runs of int8 (say two flavours) at once: the second to finish is refused
    under the lock instead of silently replacing the first one's entry."""
    stale = open_bundle(bundle)
    fresh = open_bundle(bundle)
    (tmp_path / "v").mkdir()
    fresh.update("precisions", "int8", {"graphs": {}, "flavour": "trt"})
    with pytest.raises(ExportError, match="already has a int8 \\(trt flavour\\) variant"):
        install_variant(stale, "int8", tmp_path / "v", {"graphs": {}, "metrics": {}, "fallback": []})
    assert open_bundle(bundle).variant("int8") == {"graphs": {}, "flavour": "trt"}
