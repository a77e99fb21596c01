"""Deadlines under interference: one stream of batches per control mode, a CPU hog in the middle.

The sampler's process is pinned to one core; from one third to two thirds of every run a hog (a
subprocess doing busy integer arithmetic, pinned to the same core with os.sched_setaffinity) takes
its share of that core. Every mode runs on the same schedule of interference:

    open      the planner before quantile budgets: the plan whose summed medians fit, chosen once
              (quantile 0.5; such a plan may miss even when nothing else runs);
    open95    the plan whose 0.95-quantile fits, chosen once (`generate --control open`): the
              open-loop plan that holds the budget while the machine is quiet, the quality
              closed loop should match in quiet phases;
    closed    quantile budgets, re-planned between batches from the tracked speed and excess;
    anytime   closed + shorter lengths inside a late batch;
    cheapest  the cheapest plan, always: the floor under the hog (a batch of it that waits one of
              the hog's slices and still misses would have missed with any plan).

Each batch's images are compared with the teacher (128 Euler steps at full length, the runtime on
the same backend) for the same noise: a stream cycles through `distinct` held-out noise batches.
Used by bench/deadline.py (the figures) and the demo (one plot).

The hindsight baseline (`run_front`, `hindsight_best`): every plan on the Pareto front (of the
plans whose quantile prediction fits the budget) runs fixed through the same interference: a few
quiet batches, then the hog for as many batches as the modes' loaded third. The best plan in
hindsight is the one with the lowest loaded RMSE among those that missed <= 1% of their loaded
batches: what a controller that knew the hog in advance would have run; a mode's regret is its
loaded RMSE over that plan's - 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator, Sequence

import numpy as np

from odelt.runtime.backends import open_backend
from odelt.ode.heuristics import resolve_schedule
from odelt.runtime.sampler import Sampler, make_labels, make_noise
from odelt.runtime.budget.stream import stream_for_bundle

MODES = {"open": (0.5, "open"), "open95": (0.95, "open"), "closed": (0.95, "closed"), "anytime": (0.95, "anytime"),
         "cheapest": (0.95, "open"), "nofinish": (0.95, "anytime")}   # nofinish: anytime without early finishes
HOG = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nx = 1\nwhile True:\n    x = (x * 1103515245 + 12345) % 2147483648\n"


def sampler_core() -> int:
    """The core the sampler runs on: the last one this process may use."""
    return max(os.sched_getaffinity(0))


@contextmanager
def pinned(core: int) -> Iterator[None]:
    """Pin this thread (and the threads it starts, e.g. ONNX Runtime's) to one core."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class Hog:
    """A busy subprocess pinned to `core`; start() and stop() by its own process id."""

    def __init__(self, core: int):
        self.core, self.proc = core, None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOG, str(self.core)])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


def pick_budget(manifest: Any, profile: dict, batch: int) -> float:
    """1.1 x the 0.95-quantile prediction of the best plan whose median prediction (the one model at
    q = 0.5) fits the geometric middle of the candidates' latency range: the quiet phase has a plan
    with headroom, and the hog (about half the core) pushes every mid-range plan over."""
    from odelt.runtime.budget.planner import choose
    from odelt.runtime.budget.plans import load_candidates
    from odelt.runtime.budget.predict import MEDIAN, Predictor

    candidates = load_candidates(manifest)
    at = Predictor(profile, batch, MEDIAN)
    ms = sorted(m for _, m in choose(candidates, float("inf"), at).table)
    middle = float(np.sqrt(ms[0] * ms[-1]))
    c = choose(candidates, middle, at).candidate
    return round(1.1 * Predictor(profile, batch, 0.95).candidate(c), 3)


def teacher_images(manifest: Any, x0: np.ndarray, batch: int, threads: int = 1) -> np.ndarray:
    """128 Euler steps at the longest length: the reference every plan's images are scored against."""
    schedule = resolve_schedule("uniform:euler:128", max(manifest.lengths))
    cfg = manifest.config
    with open_backend("ort", manifest, lengths=(max(manifest.lengths),), threads=threads) as be:
        sampler = Sampler(be, manifest, schedule)
        out = np.empty_like(x0)
        y = make_labels(x0.shape[0], cfg.num_classes)
        for lo in range(0, x0.shape[0], batch):
            out[lo:lo + batch], _ = sampler.sample(x0[lo:lo + batch], y[lo:lo + batch])
    return out


def held_out(manifest: Any, batch: int, distinct: int, seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    cfg = manifest.config
    x0 = make_noise(seed, distinct * batch, (cfg.in_channels, cfg.input_size, cfg.input_size))
    return x0, make_labels(distinct * batch, cfg.num_classes)


def run_mode(manifest: Any, profile: dict, mode: str, budget_ms: float, batch: int, batches: int,
             x0: np.ndarray, y: np.ndarray, teacher: np.ndarray, core: int, threads: int = 1,
             plan: str | None = None, hog_on: tuple[int, int] | None = None) -> dict[str, Any]:
    """One stream of `batches` batches with the hog on for the middle third (or `hog_on`);
    per-batch records. plan: hold this candidate throughout (open loop)."""
    quantile, control = MODES[mode]
    on, off = hog_on or (batches // 3, 2 * batches // 3)
    hog, rmse = Hog(core), []
    with pinned(core), ExitStack() as stack:
        stream = stream_for_bundle(manifest, stack, budget_ms, batch, quantile, control, threads=threads,
                                   profile=profile, finish=mode != "nofinish")
        for c in {p.candidate.name: p.candidate for p in stream.replanner.by_quality}.values():
            stream.sampler(c)                              # open every backend before timing
        if mode == "cheapest":
            stream.current = stream.replanner.cheapest
        if plan is not None:
            stream.current = next(p for p in stream.replanner.by_quality if p.candidate.name == plan)
        stream.chosen_ms = stream.current.quantile_ms
        stream.warm(batch)
        try:
            for i in range(batches):
                if i == on:
                    hog.start()
                if i == off:
                    hog.stop()
                k = i % (x0.shape[0] // batch)
                images, _ = stream.run(x0[k * batch:(k + 1) * batch], y[k * batch:(k + 1) * batch])
                diff = images - teacher[k * batch:(k + 1) * batch]
                rmse.append(float(np.sqrt(np.mean(diff * diff))))
        finally:
            hog.stop()
    recs = stream.stats.records
    error = {p.candidate.name: p.candidate.error for p in stream.replanner.by_quality}
    return {"mode": mode, "control": control, "quantile": quantile, "budget_ms": budget_ms, "hog": [on, off],
            "latency_ms": [r.latency_ms for r in recs], "rmse": rmse, "plans": [r.plan for r in recs],
            "plan_errors": [error[r.plan] for r in recs], "predicted_ms": [r.predicted_ms for r in recs],
            "switches": [len(r.switches) for r in recs], "exits": [len(r.exits) for r in recs],
            "finishes": [len(r.finishes) for r in recs],
            "exit_points": [[e.to_dict() for e in r.exits] for r in recs],
            "switch_points": [[w.to_dict() for w in r.switches] for r in recs],
            "causes": [r.cause for r in recs], "run_ms": [r.run_ms for r in recs], "replans": stream.stats.replans,
            "replan_us": [r.replan_us for r in recs], "speed": [r.speed for r in recs],
            "tail": [r.tail for r in recs], "tail_excess_ms": [r.tail_excess_ms for r in recs],
            "excess_ms": [r.excess_ms for r in recs],
            "lengths": [list(r.lengths) for r in recs], "first_predicted_ms": recs[0].predicted_ms}


def prepare(manifest: Any, profile: dict, batch: int, distinct: int) -> dict[str, Any]:
    """The held-out noise, its teacher images, the sampler's core and threads: what every run shares."""
    core, threads = sampler_core(), int(profile.get("threads", 1))
    x0, y = held_out(manifest, batch, distinct)
    with pinned(core):
        teacher = teacher_images(manifest, x0, batch, threads)
    return {"x0": x0, "y": y, "teacher": teacher, "core": core, "threads": threads}


def run_modes(manifest: Any, profile: dict, budget_ms: float, batch: int, batches: int, distinct: int = 16,
              modes: tuple[str, ...] = tuple(MODES), shared: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Every mode on the same schedule of interference, the sampler pinned to one core."""
    h = shared or prepare(manifest, profile, batch, distinct)
    return {m: run_mode(manifest, profile, m, budget_ms, batch, batches, h["x0"], h["y"], h["teacher"], h["core"],
                        h["threads"]) for m in modes}


def front_plans(manifest: Any, profile: dict, budget_ms: float, batch: int) -> list[str]:
    """The Pareto front (quantile-0.95 prediction vs quality) of the plans predicted to fit."""
    from odelt.runtime.budget.planner import pareto_front
    from odelt.runtime.budget.plans import load_candidates
    from odelt.runtime.budget.predict import QuantilePredictor

    at = QuantilePredictor(profile, batch, 0.95)
    points = [(c, at.candidate(c)) for c in load_candidates(manifest)]
    return [c.name for c, ms in pareto_front(points) if ms <= budget_ms]


def run_front(manifest: Any, profile: dict, budget_ms: float, batch: int, loaded: int, lead: int = 10,
              distinct: int = 16, shared: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Every front plan fixed: `lead` quiet batches, then `loaded` batches under the hog."""
    h = shared or prepare(manifest, profile, batch, distinct)
    return {name: run_mode(manifest, profile, "open95", budget_ms, batch, lead + loaded, h["x0"], h["y"],
                           h["teacher"], h["core"], h["threads"], plan=name, hog_on=(lead, lead + loaded))
            for name in front_plans(manifest, profile, budget_ms, batch)}


def loaded_figures(run: dict[str, Any]) -> tuple[float, float]:
    """(miss rate, mean RMSE) of a run's batches under the hog."""
    (on, off), budget = run["hog"], run["budget_ms"]
    lat, q = run["latency_ms"][on:off], run["rmse"][on:off]
    return float(np.mean([v > budget for v in lat])), float(np.mean(q))


def hindsight_best(front: dict[str, dict[str, Any]], max_miss: float = 0.01) -> tuple[str, float, float] | None:
    """(plan, its loaded miss rate, its loaded RMSE): the best fixed plan that missed <= max_miss
    of its loaded batches; None when none did."""
    ok = [(name, *loaded_figures(r)) for name, r in front.items()]
    ok = [row for row in ok if row[1] <= max_miss]
    return min(ok, key=lambda row: row[2]) if ok else None


def hindsight_run(manifest: Any, profile: dict, budget_ms: float, batch: int, hog: Sequence[int],
                  shared: dict[str, Any]) -> dict[str, Any] | None:
    """The hindsight-best fixed plan under the hog (the demo's plot and table): {"plan",
    "miss_rate", "rmse" (its loaded figures), "hog" (the modes' loaded batches), "latency_ms" (its
    loaded batches, in order)}; None when no front plan held the hog."""
    lead = 10
    front = run_front(manifest, profile, budget_ms, batch, hog[1] - hog[0], lead, shared=shared)
    best = hindsight_best(front)
    if best is None:
        return None
    run = front[best[0]]
    on, off = run["hog"]
    return {"plan": best[0], "miss_rate": best[1], "rmse": best[2], "hog": list(hog),
            "latency_ms": run["latency_ms"][on:off]}
