"""Bench group `deadline`: do batches meet a fixed budget while a CPU hog shares the sampler's core?

On builtin:digits (FP32, ORT engines, one ONNX Runtime thread; the demo's stages in a temporary
folder, a fresh profile at the bench's batch size), one process runs >= 200 consecutive batches of
`batch` images (8 by default; `bench/run.py --deadline-batch N`) per mode at one budget;
from one third to two thirds of each run a hog pinned to the sampler's core takes its share
(odelt.pipeline.interference). Modes: open loop (summed medians, one plan: the planner before
quantile budgets), open loop at quantile 0.95 (one plan, `generate --control open`), closed loop
(quantile 0.95, re-planned between batches), anytime (closed + length switches), and the
cheapest plan throughout (the floor under the hog).

    deadline_miss_rate_<mode>                batches over budget / batches (target <= 0.01 for
                                             anytime, hog included); _loaded_: the hog's third
    deadline_misses_<mode>                   the missed batches' indices
    deadline_rmse_{quiet,loaded}_<mode>      mean held-out RMSE to the teacher per phase
    deadline_quiet_quality_loss_<mode>       quiet RMSE / open loop q95's - 1, closed and anytime
                                             (target <= 0.02): the open-loop plan that holds the
                                             budget in quiet phases is the quality to match;
                                             _vs_median_plan: against the summed-medians plan,
                                             which may not hold the budget even when quiet
    deadline_recover_batches_on_<mode>       batches after the hog starts until a run of 10
                                             batches on time begins
    deadline_recover_batches_off_<mode>      batches after it stops until the plan's quality is
                                             back: the first batch whose plan error (quality
                                             table) is no worse than the pre-hog median plan
                                             error, with the median over it and the next 9 no
                                             worse either (target <= 3); _exact_: until the plan
                                             is the pre-hog phase's most common one and stays it
    deadline_hog_wait_ms                     median excess over its prediction of a batch that waited
                                             for the core under the hog (closed loop and anytime:
                                             the hog's time slice); a plan absorbs it only when its
                                             own latency + this fits the budget
    deadline_cheapest_plan_ms                the cheapest plan's 0.95-quantile prediction;
                                             _plus_wait_: + deadline_hog_wait_ms, against the budget
    deadline_miss_rate_loaded_cheapest_plan  the cheapest plan run throughout: the floor under the
                                             hog, what no choice of plan can beat; _over_floor_:
                                             closed loop's and anytime's loaded rate minus it
    deadline_quiet_stalled_batches           quiet-phase batches (open loop q95) >= 1 ms over their
                                             prediction: other processes on the shared machine
    deadline_replan_us_median/_max           tracker + re-planning per batch
    deadline_exits_<mode>                    steps stopped at an exit inside their call (anytime,
                                             segments layout); _onset_: in the hog's first batch
    deadline_hindsight_plan                  the best fixed plan in hindsight: every Pareto-front
                                             plan that fits the budget run fixed through the hog
                                             (10 quiet batches, then as many loaded ones as the
                                             modes' third), the lowest loaded RMSE among those
                                             that missed <= 1% of their loaded batches (None:
                                             none did); _rmse_, _miss_rate_: its loaded figures
    deadline_front_<plan>                    [loaded miss rate, loaded RMSE] of every front plan
    deadline_loaded_regret_<mode>            the mode's loaded RMSE / the hindsight plan's - 1
                                             (target <= 0.10 for anytime; < 0: better than any
                                             fixed plan, by switching)
    deadline_infeasible_loaded               the budget is below the cheapest plan's prediction +
                                             one hog slice (deadline_hog_wait_ms): a batch that
                                             waits a slice misses whatever the controller does,
                                             so loaded misses are the budget's, not the
                                             controller's; _reason_ says which numbers

Why the batch size matters: the hog and the sampler share the core in scheduler slices of a few
ms (4 ms ticks at HZ=250; a cheap plan's batch of 64 waited 11-24 ms under the hog). A batch of 8
(2-6 ms) either runs untouched or waits a whole slice, so a budget below the cheapest plan + one
slice cannot be held; a batch of 64 spans several slices and the hog acts as a ~2x slowdown that
the tracker reads and anytime control absorbs between steps. `deadline_batch` records the size;
`--deadline-modes` runs a subset of the modes (open95, closed, anytime always), and
`--deadline-trace FILE` writes every mode's per-batch records.

The budget: 1.1 x the quantile-0.95 prediction of the best plan whose summed medians fit half of
the candidates' latency range (geometric middle; odelt.pipeline.interference.pick_budget), so
that the quiet phase has a plan with headroom and the hog (about half the core) pushes every
mid-range plan over. The machine is shared: other processes load it too, in every phase.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from odelt import pipeline as demo
from odelt.pipeline import pick_budget, prepare_held_out, run_front, run_modes
from odelt.runtime import Predictor, load_candidates
from planner import prepare  # bench/ is on the path (bench/run.py)

NAMES = {"open": "open_loop", "open95": "open_loop_q95", "closed": "closed_loop", "anytime": "anytime",
         "cheapest": "cheapest_plan", "nofinish": "anytime_no_finish"}
STALLED_MS = 1.0          # a batch this much over its prediction waited for the core (jitter: ~0.3 ms)


def cheapest_ms(manifest, prof, batch: int) -> float:
    at = Predictor(prof, batch, 0.95)
    return min(at.candidate(c) for c in load_candidates(manifest))


RUN = 10                  # batches a recovery must hold


def recover_on(lat: list[float], budget: float, start: int, run: int = RUN) -> int:
    for i in range(start, len(lat) - run + 1):
        if all(v <= budget for v in lat[i:i + run]):
            return i - start
    return len(lat) - start


def recover_off(errors: list[float], on: int, off: int, run: int = RUN) -> int:
    """Batches after the hog stops until the plan's quality is back to the quiet phase's: the first
    batch whose plan error (the quality table's) is no worse than the pre-hog median plan error,
    and the median over it and the next run - 1 batches no worse either (a quiet phase may flip
    between plans near the budget; a later flip is the quiet phase's, not the recovery's)."""
    quiet = float(np.median(errors[:on]))
    for i in range(off, len(errors)):
        if errors[i] <= quiet and float(np.median(errors[i:i + run])) <= quiet:
            return i - off
    return len(errors) - off


def recover_off_exact(plans: list[str], on: int, off: int) -> int:
    """The earlier definition: until the plan is the pre-hog phase's most common one and stays it."""
    quiet = Counter(plans[:on]).most_common(1)[0][0]
    for i in range(off, len(plans)):
        if all(p == quiet for p in plans[i:]):
            return i - off
    return len(plans) - off


def figures(runs: dict, budget: float) -> dict:
    out: dict = {"deadline_budget_ms": budget}
    for mode, r in runs.items():
        name, (on, off), lat, q = NAMES[mode], r["hog"], r["latency_ms"], r["rmse"]
        quiet = list(range(on)) + list(range(off, len(lat)))
        out[f"deadline_miss_rate_{name}"] = round(float(np.mean([v > budget for v in lat])), 4)
        out[f"deadline_miss_rate_loaded_{name}"] = round(float(np.mean([v > budget for v in lat[on:off]])), 4)
        out[f"deadline_misses_{name}"] = [i for i, v in enumerate(lat) if v > budget]
        out[f"deadline_rmse_quiet_{name}"] = round(float(np.mean([q[i] for i in quiet])), 5)
        out[f"deadline_rmse_loaded_{name}"] = round(float(np.mean(q[on:off])), 5)
        out[f"deadline_p95_quiet_ms_{name}"] = round(float(np.quantile([lat[i] for i in quiet], 0.95)), 3)
        out[f"deadline_p95_loaded_ms_{name}"] = round(float(np.quantile(lat[on:off], 0.95)), 3)
        out[f"deadline_recover_batches_on_{name}"] = recover_on(lat, budget, on)
        out[f"deadline_recover_batches_off_{name}"] = recover_off(r["plan_errors"], on, off)
        out[f"deadline_recover_batches_off_exact_{name}"] = recover_off_exact(r["plans"], on, off)
        out[f"deadline_replans_{name}"] = r["replans"]
        out[f"deadline_switches_{name}"] = int(sum(r["switches"]))
        out[f"deadline_exits_{name}"] = int(sum(r.get("exits", [])))
        out[f"deadline_exits_onset_{name}"] = int(r["exits"][on]) if r.get("exits") else 0
        out[f"deadline_finishes_{name}"] = int(sum(r.get("finishes", [])))
        out[f"deadline_finishes_onset_{name}"] = int(r["finishes"][on]) if r.get("finishes") else 0
        out[f"deadline_first_plan_{name}"] = r["plans"][0]
        out[f"deadline_first_predicted_ms_{name}"] = round(r["first_predicted_ms"], 3)
        out[f"deadline_batches_{name}"] = len(lat)
    for mode in ("closed", "anytime", "nofinish"):
        for base, suffix in (("open95", ""), ("open", "_vs_median_plan")):
            if mode in runs and base in runs:
                out[f"deadline_quiet_quality_loss_{NAMES[mode]}{suffix}"] = round(
                    out[f"deadline_rmse_quiet_{NAMES[mode]}"] / out[f"deadline_rmse_quiet_{NAMES[base]}"] - 1, 4)
    if "cheapest" in runs:
        floor = out["deadline_miss_rate_loaded_cheapest_plan"]
        for mode in ("closed", "anytime", "nofinish"):
            if mode in runs:
                out[f"deadline_miss_rate_loaded_over_floor_{NAMES[mode]}"] = round(
                    out[f"deadline_miss_rate_loaded_{NAMES[mode]}"] - floor, 4)
    waits = [e for r in runs.values() if r["control"] != "open" for e in r["excess_ms"][r["hog"][0]:r["hog"][1]]
             if e >= STALLED_MS]
    out["deadline_hog_wait_ms"] = round(float(np.median(waits)), 3) if waits else None
    if "open95" in runs:
        r = runs["open95"]
        out["deadline_quiet_stalled_batches"] = sum(
            e >= STALLED_MS for i, e in enumerate(r["excess_ms"]) if not r["hog"][0] <= i < r["hog"][1])
    us = [u for r in runs.values() if r["control"] != "open" for u in r["replan_us"]]
    out["deadline_replan_us_median"] = round(float(np.median(us)), 2) if us else None
    out["deadline_replan_us_max"] = round(float(np.max(us)), 2) if us else None
    return out


def regret(out: dict, runs: dict, front: dict) -> dict:
    """The hindsight-best fixed plan and every mode's loaded regret against it (module doc)."""
    from odelt.pipeline import hindsight_best, loaded_figures

    for name, r in front.items():
        out[f"deadline_front_{name}"] = [round(v, 5) for v in loaded_figures(r)]
    best = hindsight_best(front)
    out["deadline_hindsight_plan"] = best[0] if best else None
    if best is not None:
        out["deadline_hindsight_miss_rate"], out["deadline_hindsight_rmse"] = round(best[1], 4), round(best[2], 5)
        for mode in runs:
            out[f"deadline_loaded_regret_{NAMES[mode]}"] = round(out[f"deadline_rmse_loaded_{NAMES[mode]}"] / best[2] - 1, 4)
    return out


def feasibility(out: dict) -> dict:
    """Below the cheapest plan + one hog slice, loaded misses are the budget's (module doc)."""
    if out.get("deadline_hog_wait_ms") is None:
        return out
    need = out["deadline_cheapest_plan_ms"] + out["deadline_hog_wait_ms"]
    out["deadline_infeasible_loaded"] = bool(out["deadline_budget_ms"] < need)
    if out["deadline_infeasible_loaded"]:
        out["deadline_infeasible_loaded_reason"] = (
            f"budget {out['deadline_budget_ms']} ms < cheapest plan {out['deadline_cheapest_plan_ms']} ms + "
            f"one hog slice {out['deadline_hog_wait_ms']} ms")
    return out


def export_for(opts: demo.DemoOptions, batch: int) -> None:
    """The demo's export, with a batch range that covers `batch` (the profile checks it; ORT graphs
    take any batch), so that the demo's later stages reuse it."""
    from odelt.bundle import BatchRange
    from odelt.exporter import ExportOptions, export_source

    default = BatchRange()
    if batch > default.max:       # else the demo's own export (the default range) covers it
        rng = BatchRange(default.min, default.opt, batch)
        export_source(opts.source, opts.out / "bundle", ExportOptions(layouts=("segments", "per-length"), batch=rng))


def run(quick: bool = False, batch: int = 8, modes: tuple[str, ...] | None = None, trace: Path | None = None,
        smoke: bool = False) -> dict:
    """`batch` images per batch (the profile is taken at it); `modes` a subset of NAMES (default all);
    `trace`: a JSON file for every mode's per-batch records (latency, plan, speed, excess, lengths).
    smoke: 30 batches per mode on a 16-image quality table (proves the code runs)."""
    batches = 30 if smoke else 90 if quick else 240
    modes = tuple(modes or NAMES)
    if set(modes) - set(NAMES) or not {"open95", "closed", "anytime"} <= set(modes):
        raise ValueError(f"deadline modes must include open95, closed, anytime out of {list(NAMES)}; got {list(modes)}")
    with tempfile.TemporaryDirectory() as tmp:
        opts = demo.DemoOptions(out=Path(tmp), precisions=("fp32",), quality_n=16 if smoke else 32 if quick else 64,
                                calib_samples=8, quick=smoke)
        export_for(opts, batch)
        manifest, prof = prepare(opts, quantize=False, profile_batches=(1, batch))
        budget = pick_budget(manifest, prof, batch)
        load0 = list(os.getloadavg())
        # the held-out set: >= 128 images, >= 2 distinct batches to cycle through
        shared = prepare_held_out(manifest, prof, batch, 2 if smoke else max(2, 128 // batch))
        runs = run_modes(manifest, prof, budget, batch, batches, modes=modes, shared=shared)
        out = figures(runs, budget)
        on, off = runs["anytime"]["hog"]
        front = run_front(manifest, prof, budget, batch, off - on, shared=shared)
        out = regret(out, runs, front)
        if trace is not None:
            from odelt.fileio import write_json_atomic

            write_json_atomic(trace, {"budget_ms": budget, "batch": batch, "runs": runs, "front": front})
        out["deadline_batch"] = batch
        out["deadline_cheapest_plan_ms"] = round(cheapest_ms(manifest, prof, batch), 3)
        if out["deadline_hog_wait_ms"] is not None:
            out["deadline_cheapest_plus_wait_ms"] = round(out["deadline_cheapest_plan_ms"] + out["deadline_hog_wait_ms"], 3)
        out = feasibility(out)
        out.update({"deadline_load_avg_start": load0, "deadline_load_avg_end": list(os.getloadavg())})
        return out
