"""The engine-mode repository on a real tritonserver (127.0.0.1, free ports): one decoupled sampler
instance feeds every request in flight to one in-process batching engine.

Skipped with the reason where tritonserver cannot run. The server imports this checkout's odelt.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from urllib.parse import urlparse

import numpy as np
import pytest

from odelt.bundle.bundle import open_bundle
from odelt.runtime.budget.plans import load_candidates
from odelt.runtime.budget.predict import QuantilePredictor
from odelt.runtime.budget.profile import load_profile
from odelt.runtime.generate import GenerateOptions, generate_from_bundle
from odelt.serving.client import Client, ServingError
from tests.serving.conftest import running_server

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def engine_server(serving_env, engine_repo, tmp_path_factory):
    yield from running_server(serving_env, engine_repo, tmp_path_factory.mktemp("triton-engine"))


def _budgets(bundle, n: int) -> list[float]:
    m = open_bundle(bundle)
    at = QuantilePredictor(load_profile(m), n)
    return sorted(1.02 * at.candidate(c) for c in load_candidates(m))


def _concurrently(url: str, jobs: list[dict], clients: int = 8) -> list:
    """Each job's Generation (or the exception it raised), sent from `clients` threads at once."""
    out: list = [None] * len(jobs)
    cursor, lock = [0], threading.Lock()

    def work() -> None:
        c = Client(url)
        try:
            while True:
                with lock:
                    i = cursor[0]
                    cursor[0] += 1
                if i >= len(jobs):
                    return
                try:
                    out[i] = c.generate(**jobs[i])
                except Exception as e:  # noqa: BLE001 - the test looks at it
                    out[i] = e
        finally:
            c.close()
    threads = [threading.Thread(target=work) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_the_repository_runs_the_engine_without_graph_models(engine_repo):
    meta = json.loads((engine_repo / "odelt_repository.json").read_text())
    assert meta["mode"] == "engine" and meta["models"] == {}
    assert sorted(p.parent.name for p in engine_repo.glob("*/config.pbtxt")) == ["odelt_sampler"]
    config = (engine_repo / "odelt_sampler" / "config.pbtxt").read_text()
    assert "decoupled: true" in config and "count: 1" in config
    assert (engine_repo / "odelt_sampler" / "1" / "bundle" / "segments" / "cond.onnx").is_file()


def test_same_images_as_generate_under_concurrency_with_mixed_steps_and_lengths(engine_server, serve_bundle):
    jobs = []
    for i in range(16):
        n = 1 + i % 4
        budgets = _budgets(serve_bundle, n)                    # each budget picks another plan
        jobs.append({"n": n, "seed": 100 + i, "budget_ms": budgets[i % len(budgets)]})
    jobs += [{"n": 2, "seed": 7, "schedule": "uniform:heun:3", "guidance": 2.0},
             {"n": 3, "seed": 8, "schedule": "uniform:dpmpp_2m:5"}]
    got = _concurrently(engine_server.url, jobs * 2)         # every request twice, all in flight together
    assert not [g for g in got if isinstance(g, Exception)]
    for job, g in zip(jobs * 2, got):
        opts = {k: v for k, v in job.items() if k not in ("guidance",)}
        ref = generate_from_bundle(serve_bundle, GenerateOptions(
            n=job["n"], batch=job["n"], seed=job["seed"], budget_ms=opts.get("budget_ms"),
            schedule=opts.get("schedule"), guidance_scale=job.get("guidance"),
            control="open"))                                  # serving never shortens steps
        if "budget_ms" in job:
            assert g.plan == ref.plan.candidate.name
            assert g.predicted_ms == pytest.approx(ref.plan.predicted_ms, rel=1e-5)
        assert g.images.shape == (job["n"], *SHAPE)
        np.testing.assert_allclose(g.images, ref.images, rtol=0, atol=1e-5)
    assert len({g.plan for g in got}) >= 4                     # mixed plans: steps, solvers and lengths


def test_eight_clients_two_hundred_requests_each_none_lost(engine_server, serve_bundle):
    jobs = []
    for i in range(1600):
        n = 1 + i % 4
        budgets = _budgets(serve_bundle, n) if i < 4 else jobs[i - 4]["_budgets"]
        jobs.append({"n": n, "seed": i % 40, "budget_ms": budgets[(i // 4) % len(budgets)], "_budgets": budgets})
    sent = [{k: v for k, v in j.items() if k != "_budgets"} for j in jobs]
    before = Client(engine_server.url).generate(n=1, seed=0, budget_ms=1e6).stats
    got = _concurrently(engine_server.url, sent)
    errors = [g for g in got if not hasattr(g, "images")]
    assert not errors, errors[:3]
    assert all(g.images.shape == (j["n"], *SHAPE) for j, g in zip(sent, got))
    # the same (n, seed, budget) is the same image, whatever shared its calls
    seen: dict = {}
    for j, g in zip(sent, got):
        digest = hashlib.sha256(np.round(g.images, 5).tobytes()).hexdigest()
        assert seen.setdefault((j["n"], j["seed"], j["budget_ms"]), digest) == digest
    after = Client(engine_server.url).generate(n=1, seed=0, budget_ms=1e6).stats
    rows = (after["rows"] - before["rows"]) / (after["passes"] - before["passes"])
    assert rows > 2.5            # a lone request sends 2.5 rows on average (n = 1..4): calls were shared


def test_a_client_that_disconnects_mid_request_does_not_disturb_the_others(engine_server):
    """tritonserver 2.51 does not cancel an HTTP request whose client went away: its HTTP front end
    stops reading the socket while a request runs, so it sees the close only after writing the
    response (server issue #7077), and is_cancelled() stays False (measured: no request was
    cancelled). The engine finishes the orphans and their replies go nowhere; the requests in
    flight beside them, and after them, are served."""
    import time

    u = urlparse(engine_server.url)
    start = Client(engine_server.url).generate(n=1, seed=0, budget_ms=1e6).stats
    body = json.dumps({"n": [4], "seed": [3], "parameters": {"schedule": "uniform:euler:200"}}).encode()
    for _ in range(3):
        s = socket.create_connection((u.hostname, u.port))
        s.sendall(b"POST /v2/models/odelt_sampler/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        s.close()                                              # gone before its 200 steps are done
    got = _concurrently(engine_server.url, [{"n": 1 + i % 4, "seed": i, "budget_ms": 1e6} for i in range(24)])
    assert all(hasattr(g, "images") for g in got)
    last = start
    for _ in range(240):                                       # until only the probe itself runs
        now = Client(engine_server.url).generate(n=1, seed=0, budget_ms=1e6).stats
        if now["passes"] - last["passes"] <= 8 and now["rows"] - start["rows"] >= 3 * 4 * 200:
            break
        last = now
        time.sleep(0.25)
    assert now["rows"] - start["rows"] >= 3 * 4 * 200          # the orphans ran to their end ...
    assert now["failed"] == start["failed"]                    # ... and their lost replies failed nothing


def test_a_grpc_client_that_cancels_its_stream_cancels_its_requests(engine_server, serving_env):
    """A gRPC stream cancelled mid-request is seen (is_cancelled(), asked by the outbox): the
    engine drops those rows instead of running them to the end, and the server keeps serving."""
    import subprocess
    import time

    from tests.serving.conftest import checkout

    start = Client(engine_server.url).generate(n=1, seed=0, budget_ms=1e6).stats
    script = checkout() / "tests" / "serving" / "grpc_cancel.py"
    run = subprocess.run([str(serving_env.venv / "bin" / "python"), str(script), f"127.0.0.1:{engine_server.grpc_port}",
                          "3", "1000", "0.5"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    for _ in range(120):
        now = Client(engine_server.url).generate(n=1, seed=0, budget_ms=1e6).stats
        if now["cancelled"] - start["cancelled"] >= 3:
            break
        time.sleep(0.25)
    assert now["cancelled"] - start["cancelled"] == 3 and now["failed"] == start["failed"]
    assert now["rows"] - start["rows"] < 3 * 4 * 1000                    # stopped early, not run to the end
    assert Client(engine_server.url).generate(n=2, seed=1, budget_ms=1e6).images.shape == (2, *SHAPE)


def test_a_bad_request_among_good_ones_gets_its_line_and_the_others_go_on(engine_server, serve_bundle):
    good = [{"n": 1 + i % 4, "seed": i, "budget_ms": 1e6} for i in range(12)]
    bad = [{"n": 1, "seed": 0, "budget_ms": 1e-3}, {"n": 50, "seed": 0, "budget_ms": 10.0},
           {"n": 1, "seed": 0, "schedule": "uniform:dopri5:1"}, {"n": 1, "seed": 0, "budget_ms": "soon"}]
    jobs = good[:6] + bad + good[6:]
    got = _concurrently(engine_server.url, jobs)
    for j, g in zip(jobs, got):
        if j in bad:
            assert isinstance(g, ServingError) and "\n" not in str(g)
        else:
            assert g.images.shape == (j["n"], *SHAPE)
    messages = [str(g) for g in got if isinstance(g, ServingError)]
    assert any("below the cheapest plan" in m for m in messages)
    assert any("n must be in 1..8" in m for m in messages)
    assert any("cannot be stepped" in m for m in messages)
    assert any("budget_ms: expected a finite number > 0" in m for m in messages)
