import shutil
import sys

import numpy as np
import pytest

from odelt.cli import main
from odelt.engines import ort as oe
from odelt.onnxrt import ort_module
from odelt.bundle.bundle import open_bundle
from tests.bundles import edit_by_hand, private_copy


def _run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 1
    # stderr may also hold the progress bar; the error itself is one line
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    errors = [ln for ln in lines if ln.startswith("odelt-export: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    return errors[0]


def _snapshot(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_build_ort_records_engines_in_manifest(tiny_bundle, capsys, x_batch):
    main(["build", str(tiny_bundle), "--backend", "ort"])
    assert "built 2 ort-fp32 engines" in capsys.readouterr().out
    m = open_bundle(tiny_bundle)                      # file hashes include the engines
    entry = m.engine_set("ort-fp32")
    assert entry["backend"] == "ort" and set(entry["graphs"]) == {"length_2", "length_4"}
    for name, rel in entry["graphs"].items():
        sess = oe.session_from_engine(tiny_bundle / rel)
        raw = ort_module().InferenceSession(str(m.graph_path(name)), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(sess.run(None, {"x": x_batch})[0], raw.run(None, {"x": x_batch})[0])
    # a second build needs --force; with it the set is replaced, others kept
    err = _run(["build", str(tiny_bundle), "--backend", "ort"], capsys)
    assert "already exists; pass --force" in err
    main(["build", str(tiny_bundle), "--backend", "ort", "--format", "ort", "--force"])
    main(["build", str(tiny_bundle), "--backend", "ort", "--force"])
    assert set(open_bundle(tiny_bundle).engine_sets) == {"ort-fp32"}
    assert not [p for p in (tiny_bundle / "engines").iterdir() if p.name.startswith(".")]


def test_tensorrt_without_tensorrt_is_one_line(tiny_bundle, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)   # absent, whatever this machine has
    before = _snapshot(tiny_bundle)
    err = _run(["build", str(tiny_bundle), "--backend", "tensorrt", "--target", "orin-nano"], capsys)
    assert err.startswith("odelt-export: error: TensorRT is not installed")
    assert "`tensorrt`" in err and "odelt-export[trt]" in err
    assert _snapshot(tiny_bundle) == before               # nothing written


def test_cpu_int8_flavour_is_refused_for_tensorrt(tiny_bundle, capsys, monkeypatch):
    from odelt.bundle.bundle import Bundle

    monkeypatch.setattr(Bundle, "int8_flavour", "cpu")  # as a cpu-flavour bundle records it
    before = _snapshot(tiny_bundle)
    err = _run(["build", str(tiny_bundle), "--backend", "tensorrt", "--precision", "int8"], capsys)
    assert "ONNX Runtime CPU flavour" in err and "--int8-flavour trt" in err
    assert _snapshot(tiny_bundle) == before


@pytest.mark.parametrize("argv, message", [
    (["--backend", "ort", "--target", "orin-mega"], "unknown target 'orin-mega'"),
    (["--backend", "onnx"], "backend 'onnx': expected one of ort, tensorrt"),
    (["--backend", "ort", "--precision", "fp8"], "precision 'fp8'"),
    (["--backend", "ort", "--precision", "fp16"], "no fp16 graphs"),
])
def test_bad_requests_leave_bundle_untouched(tiny_bundle, capsys, argv, message):
    before = _snapshot(tiny_bundle)
    assert message in _run(["build", str(tiny_bundle), *argv], capsys)
    assert _snapshot(tiny_bundle) == before


def test_failure_mid_build_leaves_nothing_half_written(tiny_bundle, capsys, monkeypatch):
    import errno

    from odelt import fileio

    real, calls = fileio.PRIMITIVES.commit, []

    def full_disk_on_second_engine(tmp, path):       # a fault injected in the write layer
        if path.suffix == ".onnx":
            calls.append(path)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(tmp, path)

    monkeypatch.setattr(fileio.PRIMITIVES, "commit", full_disk_on_second_engine)
    before = _snapshot(tiny_bundle)
    err = _run(["build", str(tiny_bundle), "--backend", "ort"], capsys)
    assert "cannot write" in err and "length_4.onnx: No space left on device" in err
    assert _snapshot(tiny_bundle) == before and len(calls) == 2
    assert not (tiny_bundle / "engines").exists()


def test_not_a_bundle(tmp_path, capsys):
    assert "not a bundle" in _run(["build", str(tmp_path), "--backend", "ort"], capsys)


def test_quantized_graphs_are_picked_when_listed(tiny_bundle, tmp_path):
    from odelt.engines.build import graph_source
    root = private_copy(tiny_bundle, tmp_path / "b")
    m = open_bundle(root)
    assert graph_source(m, "length_2", "fp16") == (m.graph_path("length_2"), False)
    (root / "fp16").mkdir()
    shutil.copy(root / "per-length" / "length_2.onnx", root / "fp16" / "length_2.onnx")

    def variant(d):                     # a variant's file is recorded with its hash, as quantize does
        d["precisions"] = {"fp16": {"graphs": {"length_2": {"file": "fp16/length_2.onnx"}}}}
        d["files"]["fp16/length_2.onnx"] = {"owner": "precisions/fp16"}
    edit_by_hand(root, variant)
    m2 = open_bundle(root)
    assert graph_source(m2, "length_2", "fp16") == (root / "fp16/length_2.onnx", True)
