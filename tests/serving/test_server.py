"""The `cpu` repository of a tiny bundle on a real tritonserver (127.0.0.1, free ports).

Skipped with the reason where tritonserver cannot run. Order matters: the last test kills the
module's server mid-load and starts a new one on the same repository.
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest

from odelt.bundle.bundle import open_bundle
from odelt.runtime.budget.predict import QuantilePredictor
from odelt.runtime.budget.plans import load_candidates
from odelt.runtime.budget.profile import load_profile
from odelt.runtime.generate import GenerateOptions, generate_from_bundle
from odelt.serving.client import Client, ServingError
from odelt.serving.wire import model_name

pytestmark = pytest.mark.integration        # a real tritonserver
SHAPE = (1, 8, 8)


def _budgets(bundle, n: int) -> list[float]:
    """Budgets just above each plan's predicted ms (0.95 quantile) at batch n: each makes the planner pick another plan."""
    m = open_bundle(bundle)
    prof = load_profile(m)
    at = QuantilePredictor(prof, n)                  # what the sampler plans with: the 0.95 quantile
    return sorted(1.02 * at.candidate(c) for c in load_candidates(m))


def test_same_images_as_generate_with_the_same_seed_and_plan(server, serve_bundle):
    client = Client(server.url)
    try:
        for n, seed, budget in ((3, 5, 1e6), (2, 7, _budgets(serve_bundle, 2)[1]), (1, 2**60 + 1, 1e6)):
            got = client.generate(n=n, seed=seed, budget_ms=budget)
            ref = generate_from_bundle(serve_bundle, GenerateOptions(n=n, batch=n, seed=seed, budget_ms=budget,
                                                                     control="open"))   # serving never shortens steps
            assert got.plan == ref.plan.candidate.name
            assert got.predicted_ms == pytest.approx(ref.plan.predicted_ms, rel=1e-5)
            assert got.images.shape == (n, *SHAPE) and got.measured_ms > 0
            np.testing.assert_allclose(got.images, ref.images, rtol=0, atol=1e-5)
        got = client.generate(n=2, seed=1, schedule="uniform:heun:3", guidance=2.0)   # host-side guidance: 2n rows
        ref = generate_from_bundle(serve_bundle, GenerateOptions(schedule="uniform:heun:3", n=2, batch=2, seed=1,
                                                                 guidance_scale=2.0))
        assert got.plan == "uniform:heun:3" and np.isnan(got.predicted_ms)
        np.testing.assert_allclose(got.images, ref.images, rtol=0, atol=1e-5)
        labelled = client.generate(n=2, seed=1, schedule="uniform:heun:3", labels=[4, 4])
        assert not np.allclose(labelled.images, got.images)
    finally:
        client.close()


def test_the_server_environment_has_no_torch(serving_env):
    import subprocess

    r = subprocess.run([str(serving_env.venv / "bin" / "python"), "-c", "import torch"], capture_output=True, text=True)
    assert r.returncode != 0 and "No module named 'torch'" in r.stderr     # the sampler model ran without it


def _step_stats(client, bundle) -> dict[str, tuple[int, int]]:
    out = {}
    for g in open_bundle(bundle).graphs:
        s = client.model_stats(model_name(g))
        out[g] = (int(s["inference_count"]), int(s["execution_count"]))
    return out


def test_eight_clients_mixed_budgets_none_lost_steps_batched(server, serve_bundle):
    budgets = _budgets(serve_bundle, 4) + [1e6]
    per_thread, results, errors = 200, {}, []          # the issue: 8 client threads x 200 requests
    stats_client = Client(server.url)
    before = _step_stats(stats_client, serve_bundle)

    def work(k: int) -> None:
        c = Client(server.url)
        try:
            for i in range(per_thread):
                n, seed = 1 + (k + i) % 4, 1000 * k + i
                r = c.generate(n=n, seed=seed, budget_ms=budgets[(k * 7 + i) % len(budgets)])
                results[(k, i)] = (n, r)
        except Exception as e:  # noqa: BLE001 - collected and reported below
            errors.append(repr(e))
        finally:
            c.close()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    after = _step_stats(stats_client, serve_bundle)
    stats_client.close()
    assert not errors and len(results) == 8 * per_thread
    for n, r in results.values():
        assert r.images.shape == (n, *SHAPE) and np.isfinite(r.images).all()
    assert len({r.plan for _, r in results.values()}) >= 3             # the budgets picked different plans
    rows = {g: (after[g][0] - before[g][0]) / max(1, after[g][1] - before[g][1]) for g in after}
    # a request of n images sends n rows per step call; > the mean n (2.5) means requests were merged
    assert all(r > 2.5 for r in rows.values()), rows


@pytest.mark.parametrize("request_kw,message", [
    (dict(n=0, budget_ms=50), "n must be in 1..8 images per request, found 0"),
    (dict(n=9, budget_ms=50), "n must be in 1..8 images per request, found 9"),
    (dict(n=2, budget_ms=1e-6), "budget 1e-06 ms is below the cheapest plan at batch 2"),
    (dict(n=2, labels=[1, 12], budget_ms=50), "unknown class 12: expected 0..9 or 10 (unconditional)"),
    (dict(n=2, labels=[1], budget_ms=50), "labels must have n=2 entries, found 1"),
    (dict(n=1), "expected request parameter budget_ms (milliseconds) or schedule (NAME), found neither"),
    (dict(n=1, schedule="/etc/passwd"), "schedule must be a name"),
    (dict(n=5, guidance=2.0, schedule="uniform:euler:2"), "n must be <= 4, found 5"),
])
def test_bad_requests_get_one_line_errors_and_the_server_keeps_serving(server, request_kw, message):
    client = Client(server.url)
    try:
        with pytest.raises(ServingError) as e:
            client.generate(seed=0, **request_kw)
        assert message in str(e.value) and "\n" not in str(e.value)
        assert client.generate(n=1, seed=0, budget_ms=1e6).images.shape == (1, *SHAPE)
    finally:
        client.close()


def _digest(repo) -> dict[str, str]:
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(repo.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def test_kill_mid_load_leaves_the_repository_intact_and_a_restart_serves(server, cpu_repo, tmp_path):
    from odelt.serving.server import TritonServer

    before, done, ended = _digest(cpu_repo), [], []
    stop = threading.Event()
    started = threading.Barrier(5)

    def load(k: int) -> None:
        c = Client(server.url, timeout_s=30)
        started.wait()
        try:
            while not stop.is_set():
                c.generate(n=4, seed=k, budget_ms=1e6)
                done.append(k)
        except (OSError, ServingError) as e:   # the server went away under this client
            ended.append(type(e).__name__)
        finally:
            c.close()

    threads = [threading.Thread(target=load, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    started.wait()
    while len(done) < 4:
        threading.Event().wait(0.02)
    server.kill()                                           # SIGKILL by PID while requests are in flight
    for t in threads:
        t.join(60)
    stop.set()
    assert len(ended) == 4                                  # every client saw the server die, none hung
    assert _digest(cpu_repo) == before
    again = TritonServer(server.env, cpu_repo, tmp_path / "work", code=server.code)
    try:
        again.start().wait_ready(180)
        client = Client(again.url)
        r = client.generate(n=2, seed=3, budget_ms=1e6)
        client.close()
        assert r.images.shape == (2, *SHAPE) and np.isfinite(r.images).all()
    finally:
        again.stop()
