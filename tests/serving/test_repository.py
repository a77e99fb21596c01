"""The model repository `odelt-export triton` writes, checked against Triton's own schema."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from odelt.cli import main
from odelt.errors import ConfigError
from odelt.bundle.bundle import open_bundle
from odelt.bundle.iospec import segments_spec
from odelt.serving.repository import RepoOptions, write_repository
from odelt.serving.wire import batched, model_name
from tests.serving.conftest import validate
from tests.serving.helpers import TINY


def test_cpu_repository_has_a_model_per_graph_and_the_sampler(cpu_repo, serve_bundle):
    manifest = open_bundle(serve_bundle)
    models = sorted(p.parent.name for p in cpu_repo.glob("*/config.pbtxt"))
    assert models == sorted([model_name(g) for g in manifest.graphs] + ["odelt_sampler"])
    for g in manifest.graphs:
        assert (cpu_repo / model_name(g) / "1" / "model.py").is_file()
        assert (cpu_repo / model_name(g) / "1" / f"{g}.onnx").is_file()
    bundle = cpu_repo / "odelt_sampler" / "1" / "bundle"
    assert (bundle / "manifest.json").is_file() and (bundle / "quality.json").is_file()
    assert not list(bundle.rglob("*.onnx"))                     # graphs live in their own models
    meta = json.loads((cpu_repo / "odelt_repository.json").read_text())
    assert meta["engines"] == "cpu" and meta["layout"] == "segments"


def _with_fake_tensorrt_set(bundle, tmp_path):
    """A copy of the bundle whose manifest lists a TensorRT engine set. The .plan files are FAKE
    placeholder bytes (no TensorRT here): only the repository's configs are under test."""
    root = tmp_path / "trt-bundle"
    shutil.copytree(bundle, root)
    b = open_bundle(root)
    graphs = {}
    for name in b.graphs:
        (root / "engines" / "tensorrt-desktop-fp32").mkdir(parents=True, exist_ok=True)
        (root / "engines" / "tensorrt-desktop-fp32" / f"{name}.plan").write_bytes(b"FAKE PLAN")
        graphs[name] = f"engines/tensorrt-desktop-fp32/{name}.plan"
    b.update("engines", "tensorrt-desktop-fp32", {"backend": "tensorrt", "target": "desktop", "precision": "fp32",
                                                  "dir": "engines/tensorrt-desktop-fp32", "graphs": graphs,
                                                  "built": {"tensorrt_version": "fake"}}, files=graphs.values())
    return root


@pytest.mark.parametrize("engines", ["cpu", "onnxruntime", "tensorrt"])
def test_every_config_passes_tritons_schema(engines, serve_bundle, serving_env, tmp_path):
    bundle = _with_fake_tensorrt_set(serve_bundle, tmp_path) if engines == "tensorrt" else serve_bundle
    repo = write_repository(bundle, tmp_path / "repo", RepoOptions(engines=engines, instances=2, max_batch=4,
                                                                   sampler="bls"))
    r = validate(serving_env, repo)
    assert r.returncode == 0, r.stderr
    kind = {"cpu": "python", "onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}[engines]
    lines = r.stdout.splitlines()
    assert len(lines) == 5 and all(f": {kind}, max_batch_size 4" in ln for ln in lines if "sampler" not in ln)
    cond = (repo / "odelt_cond" / "config.pbtxt").read_text()
    assert "count: 2" in cond
    if engines == "tensorrt":
        assert "KIND_GPU" in cond and 'profile: ["0"]' in cond and (repo / "odelt_cond/1/model.plan").is_file()
        assert "batch min/opt/max 1/4/8" in cond


def test_the_engine_mode_writes_one_decoupled_sampler_and_passes_the_schema(serve_bundle, serving_env, tmp_path):
    repo = write_repository(serve_bundle, tmp_path / "repo", RepoOptions(max_batch=4, window_ms=1.5))   # the default
    r = validate(serving_env, repo)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["odelt_sampler: python, max_batch_size 0"]
    config = (repo / "odelt_sampler" / "config.pbtxt").read_text()
    for line in ("decoupled: true", '"engine"', '"ort"', '"1.5"', "count: 1"):
        assert line in config
    bundle = repo / "odelt_sampler" / "1" / "bundle"
    assert sorted(p.name for p in (bundle / "segments").iterdir()) == ["blocks_0-1.onnx", "blocks_2-3.onnx",
                                                                        "cond.onnx", "head.onnx"]
    with pytest.raises(ConfigError, match="--sampler must be one of"):
        write_repository(serve_bundle, tmp_path / "x", RepoOptions(sampler="fast"))


def test_schema_check_rejects_a_misspelt_field(cpu_repo, serving_env, tmp_path):
    repo = tmp_path / "bad"
    shutil.copytree(cpu_repo, repo)
    cfg = repo / "odelt_head" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("max_batch_size", "max_batch_sise"))
    r = validate(serving_env, repo)
    assert r.returncode == 1 and "odelt_head/config.pbtxt: not a valid Triton model config" in r.stderr


def test_guided_graphs_that_mix_row_axes_are_served_unbatched():
    plan = segments_spec(TINY, (2, 4), guided=True)
    kinds = {g.name: batched(g) for g in plan.graphs}
    # cond: B rows in, 2B out; the first chunk: x has B rows, its mods 2B; head: V has 2B rows,
    # cfg_scale B; only a later chunk has 2B rows throughout
    assert kinds == {"cond": False, "blocks_0-1": False, "blocks_2-3": True, "head": False}


def _error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("odelt-export: error: ")
    return err


def test_cli_writes_once_and_refuses_to_overwrite(serve_bundle, tmp_path, capsys):
    out = tmp_path / "repo"
    main(["triton", str(serve_bundle), "--out", str(out), "--sampler", "bls"])
    assert "5 models" in capsys.readouterr().out
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert "already exists; pass --force" in _error(["triton", str(serve_bundle), "--out", str(out)], capsys)
    assert "expected one TensorRT fp32 engine set, found []" in _error(
        ["triton", str(serve_bundle), "--out", str(tmp_path / "t"), "--engines", "tensorrt"], capsys)
    assert "--instances must be >= 1" in _error(
        ["triton", str(serve_bundle), "--out", str(tmp_path / "i"), "--instances", "0"], capsys)
    assert "--max-batch 16 exceeds the TensorRT profile's batch max 8" in _error(
        ["triton", str(serve_bundle), "--out", str(tmp_path / "m"), "--engines", "tensorrt", "--max-batch", "16"], capsys)
    main(["triton", str(serve_bundle), "--out", str(out), "--force", "--layout", "segments", "--sampler", "bls"])
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]     # no temporary folder left


def test_cli_engine_mode_takes_threads_and_window(serve_bundle, tmp_path, capsys):
    """The documented engine-mode options reach the sampler's config (one decoupled instance)."""
    out = tmp_path / "repo"
    main(["triton", str(serve_bundle), "--out", str(out), "--sampler", "engine", "--backend", "ort", "--threads", "2",
          "--window-ms", "1.5", "--refill-ms", "0.5"])
    capsys.readouterr()
    config = (out / "odelt_sampler" / "config.pbtxt").read_text()
    assert "decoupled: true" in config
    for key, value in (("mode", "engine"), ("threads", "2"), ("window_ms", "1.5"), ("refill_ms", "0.5"),
                       ("backend", "ort")):
        assert re.search(rf'key: "{key}"\s*value\s*{{\s*string_value: "{re.escape(value)}"', config), (key, config)
    assert "--window-ms must be >= 0" in _error(
        ["triton", str(serve_bundle), "--out", str(tmp_path / "w"), "--window-ms", "-1"], capsys)
    assert "--refill-ms must be >= 0, found -1.0" in _error(
        ["triton", str(serve_bundle), "--out", str(tmp_path / "r"), "--refill-ms", "-1"], capsys)
    assert not (tmp_path / "r").exists()
