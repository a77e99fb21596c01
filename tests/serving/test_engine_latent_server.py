"""A latent bundle's engine-mode repository on a real tritonserver (127.0.0.1, free ports, one server
start): the in-process engine samples the latents of every request in flight, the decode thread
decodes each with its request's decoder, and the replies carry the pixels `generate` makes with the
same seed, plan and decoder. Skipped with the reason where tritonserver cannot run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from odelt.runtime.generate import GenerateOptions, generate_from_bundle
from odelt.serving.client import Client, ServingError
from tests.serving.conftest import running_server
from tests.serving.helpers import make_latent_serving_bundle
from tests.serving.test_engine_decode import IMAGE, budgets
from tests.serving.test_engine_server import _concurrently


@pytest.fixture(scope="module")
def latent_engine(tmp_path_factory):
    from odelt.serving.repository import RepoOptions, write_repository

    root = tmp_path_factory.mktemp("engine-latent-server")
    bundle = make_latent_serving_bundle(root / "b")
    return bundle, write_repository(bundle.root, root / "repo", RepoOptions())      # engine: the default on cpu


@pytest.fixture(scope="module")
def latent_server(serving_env, latent_engine, tmp_path_factory):
    yield from running_server(serving_env, latent_engine[1], tmp_path_factory.mktemp("triton-latent"))


def test_the_repository_holds_the_decoders_beside_the_layout(latent_engine, serving_env):
    from tests.serving.conftest import validate

    bundle, repo = latent_engine
    meta = json.loads((repo / "odelt_repository.json").read_text())
    assert meta["mode"] == "engine" and meta["models"] == {} and meta["decoder"] == "sd"
    inside = repo / "odelt_sampler" / "1" / "bundle"
    assert (inside / "decoder" / "decoder_sd.onnx").is_file() and (inside / "decoder" / "decoder_taesd.onnx").is_file()
    config = (repo / "odelt_sampler" / "config.pbtxt").read_text()
    assert "decoupled: true" in config and "dims: [-1, 3, 16, 16]" in config.split('name: "images"')[1].split("}")[0]
    r = validate(serving_env, repo)
    assert r.returncode == 0, r.stderr


def test_same_pixels_as_generate_under_concurrency_and_a_bad_decoder_is_one_line(latent_server, latent_engine):
    bundle = latent_engine[0]
    jobs = []
    for i in range(16):
        n, kind = 1 + i % 4, ("sd", "taesd")[(i // 2) % 2]
        b = budgets(bundle, n, kind)
        jobs.append({"n": n, "seed": 60 + i, "budget_ms": b[i % len(b)], **({"decoder": kind} if i % 3 else {})})
    bad = {"n": 1, "seed": 0, "budget_ms": 1e6, "decoder": "vq"}
    sent = jobs[:8] + [bad] + jobs[8:]
    got = _concurrently(latent_server.url, sent, clients=6)
    err = got.pop(8)
    assert isinstance(err, ServingError) and "no 'vq' decoder" in str(err) and "\n" not in str(err)
    assert not [g for g in got if isinstance(g, Exception)], [g for g in got if isinstance(g, Exception)][:2]
    for job, g in zip(jobs, got):
        kind = job.get("decoder", "sd")                       # the bundle's default decoder
        ref = generate_from_bundle(bundle.root, GenerateOptions(n=job["n"], batch=job["n"], seed=job["seed"],
                                                                budget_ms=job["budget_ms"], decoder=kind,
                                                                control="open"))
        assert g.plan == ref.plan.candidate.name and g.plan.endswith(f"+{kind}")
        assert g.predicted_ms == pytest.approx(ref.plan.predicted_ms, rel=1e-5)
        assert g.images.shape == (job["n"], *IMAGE)
        np.testing.assert_allclose(g.images, ref.images, rtol=0, atol=1e-5)
    assert len({g.plan for g in got}) >= 4                      # mixed steps, lengths and decoders
    last = Client(latent_server.url).generate(n=2, seed=1, schedule="uniform:euler:2").stats
    assert last["decode_rows"] >= sum(j["n"] for j in jobs) and last["decode_calls"] >= 1
