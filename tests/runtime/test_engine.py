"""The batching engine: which rows each call gathers, where rows leave, cancellation and failure
(on a FAKE backend with exact answers), and the same images as `generate` on the real tiny bundle.

The fake runs the tiny bundle's real chains (segments: cond, blocks_0-1[, blocks_2-3], head) with
made-up graphs whose result is exact: the conditioning graph puts c(l) = -l/8 in final_mod, the
first chunk copies x into V, every chunk adds 1 to a counter cell of V, and the head returns
v = x * c(l) + (chunks passed). So a row that ran the wrong chunks, or left at the wrong head, or
got another row's state, gets a different velocity; `expected` solves the same ODE directly.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from odelt.bundle.bundle import open_bundle
from odelt.errors import ConfigError, RuntimeFailure
from odelt.ode.heuristics import heuristic_schedule
from odelt.ode.steppers import drive
from odelt.runtime.engine import Cancelled, Engine, EngineOptions, Job, stepper_grid
from odelt.runtime.sampler import make_noise

SHAPE = (1, 8, 8)
CHUNKS = {2: 1, 4: 2}                  # the tiny model's chunks per length


class FakeGraphs:
    """FAKE backend: runs graphs by their role with exact made-up arithmetic (module doc); records
    (graph, rows) per call. `poison`: a label whose rows make the call fail; `nan`: one that makes
    the velocity NaN."""

    def __init__(self, manifest, layout="segments", poison=None, nan=None):
        self.manifest, self.layout, self.lengths = manifest, layout, tuple(manifest.lengths)
        self.calls: list[tuple[str, int]] = []
        self.poison, self.nan = poison, nan

    def run_graph(self, graph, feeds):
        rows = int(next(iter(feeds.values())).shape[0])
        self.calls.append((graph.name, rows))
        outs = {t.name: np.zeros(t.resolve(rows), np.float32) for t in graph.outputs}
        if graph.kind == "conditioning":
            if self.poison is not None and (feeds["y"] == self.poison).any():
                raise ValueError("poisoned rows")
            outs["final_mod"][:, 0] = feeds["l"].astype(np.float32) * np.float32(-0.125)
            outs["final_mod"][:, 1] = np.where(feeds["y"] == self.nan, np.nan, 0.0)
        elif graph.kind == "chunk":
            if "x" in feeds:
                v = outs["V_out"].reshape(rows, -1)
                v[:, :64] = feeds["x"].reshape(rows, 64)
                v[:, -1] = 1
            else:
                outs["V_out"][:] = feeds["V"]
                outs["V_out"].reshape(rows, -1)[:, -1] += 1
        else:
            V = feeds["V"].reshape(rows, -1)
            x, c = V[:, :64].reshape(rows, *SHAPE), feeds["final_mod"][:, 0].reshape(rows, 1, 1, 1)
            outs["velocity"] = x * c + V[:, -1].reshape(rows, 1, 1, 1) + feeds["final_mod"][:, 1].reshape(rows, 1, 1, 1)
        return outs


class FakeChains:
    """FAKE backend without per-graph access: whole chains, one length per call (like TensorRT's)."""

    def __init__(self, manifest):
        self.layout, self.lengths = "segments", tuple(manifest.lengths)
        self.calls: list[tuple[int, int]] = []

    def infer(self, feeds):
        ls = feeds["l"]
        assert (ls == ls[0]).all()
        self.calls.append((int(ls[0]), int(ls.shape[0])))
        c = np.float32(-0.125) * np.float32(ls[0])
        return {"velocity": feeds["x"] * c + np.float32(CHUNKS[int(ls[0])])}


def expected(job: Job) -> np.ndarray:
    s = job.schedule
    grid, kwargs = stepper_grid(s)

    def f(x, t, n):
        c = np.float32(-0.125) * np.float32(s.lengths[n])
        return x * c + np.float32(CHUNKS[s.lengths[n]])
    return drive(s.solver, f, make_noise(job.seed, job.n, SHAPE), grid, **kwargs)


def job(n, seed, solver="euler", steps=3, length=4, **kw) -> Job:
    return Job(n=n, seed=seed, schedule=heuristic_schedule("uniform", solver, steps, length), **kw)


def run_all(engine, tickets, limit=200):
    for _ in range(limit):
        if all(t.done() for t in tickets):
            return
        engine.tick()
    raise AssertionError("requests did not finish")


@pytest.fixture
def manifest(tiny_bundle):
    return open_bundle(tiny_bundle.root)


def test_a_segment_call_takes_every_row_whose_length_passes_through_it(manifest):
    be = FakeGraphs(manifest)
    engine = Engine(manifest, be, EngineOptions(max_rows=32))
    jobs = [job(1, 0, length=2), job(2, 1, length=4, solver="heun"), job(3, 2, length=2, solver="ipndm", steps=4)]
    tickets = [engine.submit(j) for j in jobs]
    engine.tick()
    # 6 rows condition together; blocks_0-1 runs on all 6, blocks_2-3 only on the length-4 request's 2
    # rows; all 6 leave at the one head
    assert be.calls == [("cond", 6), ("blocks_0-1", 6), ("blocks_2-3", 2), ("head", 6)]
    run_all(engine, tickets)
    for j, t in zip(jobs, tickets):
        np.testing.assert_array_equal(t.result(), expected(j))
    assert engine.stats.finished == 3 and engine.stats.failed == 0
    assert engine.stats.rows / engine.stats.passes > 3        # more than any one request sends


def test_mixed_steps_lengths_and_guidance_are_exact(manifest):
    be = FakeGraphs(manifest)
    engine = Engine(manifest, be, EngineOptions(max_rows=32))
    jobs = [job(2, s, solver=sv, steps=k, length=ln) for s, (sv, k, ln) in
            enumerate([("euler", 1, 2), ("heun", 2, 4), ("dpmpp_3m", 5, 4), ("midpoint", 3, 2), ("ipndm_v", 6, 4)])]
    tickets = [engine.submit(j) for j in jobs]
    run_all(engine, tickets)
    for j, t in zip(jobs, tickets):
        np.testing.assert_array_equal(t.result(), expected(j))
    # host guidance: the null rows join the call; with v_c == v_u (labels do not enter the fake) the mix is v
    g = job(2, 9, guidance=3.0)
    t = engine.submit(g)
    run_all(engine, [t])
    np.testing.assert_allclose(t.result(), expected(g), rtol=0, atol=1e-6)
    assert ("cond", 4) in be.calls[-4:]


def test_row_cap_splits_passes_and_every_request_progresses(manifest):
    be = FakeGraphs(manifest)
    engine = Engine(manifest, be, EngineOptions(max_rows=4))
    jobs = [job(3, 0), job(2, 1, length=2), job(1, 2), job(4, 3, steps=2)]
    tickets = [engine.submit(j) for j in jobs]
    engine.tick()
    assert be.calls[0] == ("cond", 4)                          # 3 + 1: the 2-row request waits
    run_all(engine, tickets)
    assert max(rows for name, rows in be.calls if name == "cond") <= 4
    for j, t in zip(jobs, tickets):
        np.testing.assert_array_equal(t.result(), expected(j))
    with pytest.raises(ConfigError, match="at most 4 rows"):
        engine.submit(job(5, 0))


def test_a_cancelled_request_frees_its_rows_and_the_others_go_on(manifest):
    be = FakeGraphs(manifest)
    engine = Engine(manifest, be, EngineOptions(max_rows=32))
    jobs = [job(1, 0, steps=6), job(3, 1, steps=6), job(2, 2, steps=6)]
    tickets = [engine.submit(j) for j in jobs]
    engine.tick()
    engine.tick()
    tickets[1].cancel()
    be.calls.clear()
    engine.tick()
    assert be.calls[0] == ("cond", 3)                          # its 3 rows are gone
    run_all(engine, tickets)
    with pytest.raises(Cancelled):
        tickets[1].result()
    for i in (0, 2):
        np.testing.assert_array_equal(tickets[i].result(), expected(jobs[i]))
    assert (engine.stats.cancelled, engine.stats.finished) == (1, 2)


def test_a_failing_request_leaves_with_one_line_and_the_others_finish(manifest):
    be = FakeGraphs(manifest, poison=7, nan=5)
    engine = Engine(manifest, be, EngineOptions(max_rows=32))
    jobs = [job(2, 0), job(1, 1, labels=np.array([7], np.int32)), job(1, 2, labels=np.array([5], np.int32)),
            job(2, 3, length=2)]
    tickets = [engine.submit(j) for j in jobs]
    run_all(engine, tickets)
    with pytest.raises(RuntimeFailure, match="ValueError: poisoned rows") as e:
        tickets[1].result()
    assert "\n" not in str(e.value)
    with pytest.raises(RuntimeFailure, match="non-finite"):
        tickets[2].result()
    for i in (0, 3):
        np.testing.assert_array_equal(tickets[i].result(), expected(jobs[i]))
    assert (engine.stats.failed, engine.stats.finished) == (2, 2)


def test_a_backend_that_runs_whole_chains_batches_rows_per_length(manifest):
    be = FakeChains(manifest)
    engine = Engine(manifest, be, EngineOptions(max_rows=32))
    jobs = [job(1, 0, length=2), job(2, 1, length=4), job(3, 2, length=2)]
    tickets = [engine.submit(j) for j in jobs]
    engine.tick()
    assert sorted(be.calls) == [(2, 4), (4, 2)]
    run_all(engine, tickets)
    for j, t in zip(jobs, tickets):
        np.testing.assert_array_equal(t.result(), expected(j))


def test_requests_the_engine_cannot_step_are_refused(manifest, tiny_cfg_bundle):
    engine = Engine(manifest, FakeGraphs(manifest))
    with pytest.raises(ConfigError, match="cannot be stepped"):
        engine.submit(Job(n=1, seed=0, schedule=heuristic_schedule("uniform", "dopri5", 1, 4)))
    cfg = open_bundle(tiny_cfg_bundle.root)
    with pytest.raises(ConfigError, match="guidance folded"):
        Engine(cfg, FakeGraphs(cfg))


def test_the_engine_thread_serves_concurrent_submitters(manifest):
    be = FakeGraphs(manifest)
    engine = Engine(manifest, be, EngineOptions(max_rows=16, window_ms=1.0)).start()
    results, errors = {}, []

    def client(k):
        try:
            for i in range(10):
                j = job(1 + (k + i) % 3, 100 * k + i, solver=("euler", "heun")[i % 2], steps=1 + i % 4,
                        length=(2, 4)[k % 2])
                results[(k, i)] = (j, engine.submit(j).result(timeout=30))
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.stop()
    assert not errors and len(results) == 80
    for j, images in results.values():
        np.testing.assert_array_equal(images, expected(j))
    s = engine.stats.summary()
    assert s["finished"] == 80 and s["rows_per_pass"] > 2.0 and s["queue_p50_ms"] >= 0


def test_refill_holds_the_next_pass_for_a_client_that_sends_again(manifest):
    """After a pass that one request left, the engine waits (up to refill_ms) for one new request:
    a client that sends its next request when the first returns joins the very next pass."""
    be = FakeGraphs(manifest)
    engine = Engine(manifest, be, EngineOptions(max_rows=16, refill_ms=5000.0))
    short, long = job(1, 1, steps=1), job(2, 2, steps=2)
    first, other = engine.submit(short), engine.submit(long)
    engine.start()
    first.result(timeout=30)
    again = engine.submit(job(3, 3, steps=1))
    np.testing.assert_array_equal(again.result(timeout=30), expected(job(3, 3, steps=1)))
    other.result(timeout=30)
    engine.stop()
    conds = [rows for name, rows in be.calls if name == "cond"]
    assert conds[:2] == [1 + 2, 2 + 3]          # pass 2: the long request and the new one together


def test_refill_waits_at_most_its_time_when_nobody_comes(manifest):
    import time
    be = FakeGraphs(manifest)
    engine = Engine(manifest, be, EngineOptions(max_rows=16, refill_ms=300.0))
    tickets = [engine.submit(job(1, 1, steps=1)), engine.submit(job(2, 2, steps=3))]
    start = time.monotonic()
    engine.start()
    tickets[1].result(timeout=30)
    engine.stop()
    assert time.monotonic() - start >= 0.3      # one wait, after the short request left
    assert [rows for name, rows in be.calls if name == "cond"] == [3, 2, 2]
    with pytest.raises(ConfigError, match="refill_ms must be >= 0"):
        EngineOptions(refill_ms=-1.0)


@pytest.mark.parametrize("layout", ["segments", "per-length"])
def test_same_images_as_generate_whatever_else_is_in_flight(tiny_bundle, layout):
    """The real graphs in ONNX Runtime: each request's images equal the Sampler's for its seed and
    schedule alone, while other requests at other steps, lengths and solvers share its calls."""
    from odelt.runtime.backends import open_backend
    from odelt.runtime.sampler import Sampler, generate

    manifest = open_bundle(tiny_bundle.root)
    specs = [(3, "euler", 4, 2, None), (2, "heun", 3, 4, None), (1, "euler", 2, 4, 2.0), (4, "ipndm", 5, 4, None),
             (2, "dpmpp_2m", 6, 2, None), (1, "amed", 2, 2, None)]
    with open_backend("ort", manifest, layout=layout, threads=1, use_engines=False) as be:
        engine = Engine(manifest, be, EngineOptions(max_rows=8))
        jobs = [Job(n=n, seed=20 + i, schedule=heuristic_schedule("uniform", sv, k, ln), guidance=g)
                for i, (n, sv, k, ln, g) in enumerate(specs)]
        tickets = [engine.submit(j) for j in jobs]
        run_all(engine, tickets)
        assert engine.stats.rows / engine.stats.passes > 3
        for j, t in zip(jobs, tickets):
            ref, _ = generate(Sampler(be, manifest, j.schedule, j.guidance), j.n, j.n, j.seed)
            np.testing.assert_allclose(t.result(), ref, rtol=0, atol=1e-5)
