"""The export / inspect / verify commands and their one-line errors."""

import json

import pytest

from odelt.cli import main


def run_err(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err              # one line, no traceback
    return err


def test_export_inspect_verify(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "b"
    main(["export", str(tiny_ckpt), "--out", str(out), "--layout", "both", "--lengths", "2,4", "--batch", "1:2:4"])
    assert "wrote" in capsys.readouterr().out
    main(["inspect", str(out)])
    text = capsys.readouterr().out
    assert "segments/blocks_2-3.onnx" in text and "cond -> blocks_0-1 -> blocks_2-3 -> head" in text
    assert "batch 1:2:4" in text
    main(["verify", str(out), "--json", "--cases", "1"])
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["max_abs_err"] < 1e-4
    assert set(report["weight_bytes"]) == {"segments", "per-length", "segments_without_conditioning"}
    assert report["batch_sizes"] == [1, 3]
    assert {"max_abs_err", "per_length", "param_bytes", "weight_bytes"} <= set(report)


@pytest.mark.parametrize("args,msg", [
    (["--lengths", "0"], "length must be an integer in [1, 5]"),
    (["--lengths", "6"], "length must be an integer in [1, 5]"),
    (["--lengths", "2,x"], "--lengths must be comma-separated"),
    (["--batch", "0:1:2"], "batch range"),
    (["--batch", "4:2:8"], "batch range"),
    (["--batch", "big"], "--batch must be"),
    (["--opset", "11"], "unsupported opset 11"),
    (["--layout", "tree"], "--layout must be one of"),
])
def test_export_bad_input_is_one_line(tiny_ckpt, tmp_path, capsys, args, msg):
    err = run_err(capsys, ["export", str(tiny_ckpt), "--out", str(tmp_path / "b"), *args])
    assert msg in err
    assert not (tmp_path / "b").exists()


def test_missing_source_and_config_mismatch(tmp_path, capsys, jax_small):
    err = run_err(capsys, ["export", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "b")])
    assert "checkpoint not found" in err
    err = run_err(capsys, ["export", "builtin:no_such_model", "--out", str(tmp_path / "b")])
    assert "unknown builtin model" in err
    bad = dict(jax_small[1], depth=6)               # the pickle has 4 blocks
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    err = run_err(capsys, ["export", str(jax_small[0]), "--config", str(tmp_path / "bad.json"),
                           "--out", str(tmp_path / "b")])
    assert "DiTBlock_4" in err or "missing" in err
    assert not (tmp_path / "b").exists()


def test_existing_bundle_and_tampering(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "b"
    main(["export", str(tiny_ckpt), "--out", str(out), "--lengths", "2"])
    capsys.readouterr()
    assert "already exists; pass --force" in run_err(capsys, ["export", str(tiny_ckpt), "--out", str(out)])
    main(["export", str(tiny_ckpt), "--out", str(out), "--lengths", "4", "--force"])
    capsys.readouterr()
    (out / "segments" / "cond.onnx").write_bytes(b"garbage")
    assert "cond.onnx was modified" in run_err(capsys, ["inspect", str(out)])
    assert "cond.onnx was modified" in run_err(capsys, ["verify", str(out)])
    assert "not a bundle" in run_err(capsys, ["inspect", str(tmp_path)])


def test_verify_detects_a_different_source(tiny_ckpt, tmp_path, capsys):
    from odelt.models import save_checkpoint

    from .conftest import random_model

    out = tmp_path / "b"
    main(["export", str(tiny_ckpt), "--out", str(out), "--lengths", "2"])
    capsys.readouterr()
    other = tmp_path / "other.safetensors"
    save_checkpoint(random_model(seed=1), other)
    assert "exported from hash" in run_err(capsys, ["verify", str(out), "--source", str(other)])
