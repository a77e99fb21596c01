"""The engine-mode repository over the `openvino` runtime backend on a real tritonserver: the
sampler imports the bundle's OpenVINO set in its own process and serves the same images as
`generate --backend openvino` (same seed, same plan), several requests in flight at once. One
server start. Skipped with the reason where OpenVINO or tritonserver cannot run."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("openvino", reason="OpenVINO (the `openvino` extra) is not installed")

from odelt.bundle.bundle import open_bundle  # noqa: E402
from odelt.cli import main  # noqa: E402
from odelt.runtime.budget.plans import load_candidates  # noqa: E402
from odelt.runtime.budget.predict import QuantilePredictor  # noqa: E402
from odelt.runtime.budget.profile import load_profile, profile_bundle, save_profile  # noqa: E402
from odelt.runtime.generate import GenerateOptions, generate_from_bundle  # noqa: E402
from tests.serving.conftest import running_server  # noqa: E402

FP32_ATOL = 1e-4          # OpenVINO fp32 vs itself at other batch sizes: kernel order only
SHAPE = (1, 8, 8)


def _concurrently(url: str, jobs: list[dict], clients: int) -> list:
    """Each job's Generation (or the exception it raised), `clients` requests in flight at once."""
    from concurrent.futures import ThreadPoolExecutor

    from odelt.serving.client import Client

    def one(job: dict):
        c = Client(url)
        try:
            return c.generate(**job)
        except Exception as e:  # noqa: BLE001 - the test looks at it
            return e
        finally:
            c.close()
    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, jobs))


@pytest.fixture(scope="module")
def ov_bundle(serve_bundle, tmp_path_factory):
    """The serving bundle with an OpenVINO fp32 set and this device's OpenVINO profile."""
    from odelt.engines.build import BuildRequest, build_bundle

    root = tmp_path_factory.mktemp("ov-serve") / "tiny"
    shutil.copytree(serve_bundle, root)
    build_bundle(root, BuildRequest(backend="openvino", precision="fp32"))
    manifest = open_bundle(root)
    save_profile(manifest, profile_bundle(manifest, "openvino", (1, 8), repeats=5, time_graphs=False))
    return root


@pytest.fixture(scope="module")
def ov_server(serving_env, ov_bundle, tmp_path_factory):

    probe = subprocess.run([str(serving_env.venv / "bin" / "python"), "-c", "import openvino"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"the serving environment {serving_env.venv} has no openvino (run `make serve-env`)")
    from odelt.serving.repository import RepoOptions, write_repository

    repo = write_repository(ov_bundle, tmp_path_factory.mktemp("repo-ov") / "ov",
                            RepoOptions(sampler="engine", backend="openvino"))
    for s in running_server(serving_env, repo, tmp_path_factory.mktemp("triton-ov")):
        yield s, repo


def test_the_repository_holds_the_openvino_set_not_onnx(ov_server):
    _, repo = ov_server
    meta = json.loads((repo / "odelt_repository.json").read_text())
    assert meta["mode"] == "engine" and meta["backend"] == "openvino" and meta["engine_set"] == "openvino-cpu-fp32"
    bundle = repo / "odelt_sampler" / "1" / "bundle"
    assert (bundle / "engines" / "openvino-cpu-fp32" / "cond.blob").is_file()
    assert (bundle / "engines" / "openvino-cpu-fp32" / "cond.blob.json").is_file()
    assert not list(bundle.rglob("*.onnx"))
    config = (repo / "odelt_sampler" / "config.pbtxt").read_text()
    assert '"openvino"' in config and '"openvino-cpu-fp32"' in config


def test_same_images_as_generate_with_openvino_under_concurrency(ov_server, ov_bundle):
    server, _ = ov_server
    m = open_bundle(ov_bundle)
    jobs: list[dict] = []
    for i, n in enumerate((1, 3, 2, 4)):
        at = QuantilePredictor(load_profile(m, backend="openvino"), n)
        budgets = sorted(1.02 * at.candidate(c) for c in load_candidates(m))
        jobs.append({"n": n, "seed": 20 + i, "budget_ms": budgets[i % len(budgets)]})
    jobs += [{"n": 2, "seed": 7, "schedule": "uniform:heun:3"}, {"n": 3, "seed": 8, "schedule": "uniform:euler:4"}]
    got = _concurrently(server.url, jobs * 2, clients=4)   # every request twice, in flight together
    assert not [g for g in got if isinstance(g, Exception)], got
    for job, g in zip(jobs * 2, got):
        ref = generate_from_bundle(ov_bundle, GenerateOptions(
            n=job["n"], batch=job["n"], seed=job["seed"], budget_ms=job.get("budget_ms"), schedule=job.get("schedule"),
            backend="openvino", plan_backends=("openvino",), control="open"))
        if "budget_ms" in job:
            assert ref.plan.candidate.backend == "openvino" and g.plan == ref.plan.candidate.name
            assert g.plan.endswith("@openvino")
            assert g.predicted_ms == pytest.approx(ref.plan.predicted_ms, rel=1e-5)
        assert g.images.shape == (job["n"], *SHAPE)
        np.testing.assert_allclose(g.images, ref.images, rtol=0, atol=FP32_ATOL)
        assert np.abs(ref.images).max() > 0.1                # a real signal on both sides
    assert max(g.stats["passes"] for g in got) > 0                # the engine ran them


def test_cli_writes_the_openvino_repository_and_refuses_a_missing_set_in_one_line(ov_bundle, tmp_path, capsys):
    main(["triton", str(ov_bundle), "--out", str(tmp_path / "ok"), "--sampler", "engine", "--backend", "openvino"])
    assert "sampler via the in-process engine (openvino)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["triton", str(ov_bundle), "--out", str(tmp_path / "r"), "--sampler", "engine", "--backend", "openvino",
              "--precision", "int8"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and not (tmp_path / "r").exists() and len(err.splitlines()) == 1
    assert "no int8 one" in err and "odelt-export build BUNDLE --backend openvino --precision int8" in err
    with pytest.raises(SystemExit):
        main(["triton", str(ov_bundle), "--out", str(tmp_path / "b"), "--sampler", "bls", "--backend", "openvino"])
    assert "expected --sampler engine" in capsys.readouterr().err


def test_a_bf16_set_that_runs_f32_is_not_served_as_bf16(ov_bundle, tmp_path, capsys):
    from odelt.engines.build import BuildRequest, build_bundle
    from odelt.runtime.backends.openvino import runs_as

    root = tmp_path / "b"
    shutil.copytree(ov_bundle, root)
    entry = build_bundle(root, BuildRequest(backend="openvino", precision="bf16"))
    argv = ["triton", str(root), "--out", str(tmp_path / "r"), "--sampler", "engine", "--backend", "openvino",
            "--precision", "bf16"]
    if runs_as(entry) == "bf16":            # a CPU with BF16: served as asked
        main(argv)
        assert "precision bf16" in capsys.readouterr().out
        return
    with pytest.raises(SystemExit):         # this CPU ran the hint as f32: refused, naming what runs
        main(argv)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "runs fp32, not bf16" in err and "--precision fp32" in err
    assert not (tmp_path / "r").exists()
