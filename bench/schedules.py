"""Bench group `schedules` (issue 5 §5): learned schedules on builtin:digits, held-out noise.

All errors are RMSE to the teacher (128 full-length Euler steps, dt_base 7) on held-out noise that
learning never saw. Learning uses 100 teacher pairs (50 train / 50 validation), seed 0.

  ld3_err_ratio_nfe4          LD3 / uniform grid, Euler, NFE 4, full length (target <= 0.6). Each side
                              takes its better shortcut-level mode (per-step vs fixed 7): LD3 picks by
                              validation error, the uniform baseline by held-out error (its best case).
  amed_err_ratio_nfe4         AMED-Plugin on iPNDM / iPNDM, NFE 4, uniform base grid (target < 1.0);
                              also `_euler` (plugin on Euler) and AMED-Solver vs midpoint.
  length_schedule_block_frac  block evaluations of the cheapest per-step-length schedule (Euler, grid
                              learned) whose held-out error reaches the full-length NFE-4 LD3 error,
                              / the 32 blocks of that schedule (target <= 0.75). Budgets are tried
                              from small to large; the best single-length schedule at the same budget
                              is reported beside it.
  dt_* figures                per-step dt_base (from the step size) vs fixed dt_base 7, learned LD3.

    .venv/bin/python bench/run.py --only schedules [--quick] --out out/bench-schedules.json
ODELT_BENCH_DIGITS=path.safetensors substitutes another digits checkpoint (development only).
"""

from __future__ import annotations

import os
import time

import torch

from odelt.fileio import file_hash
from odelt.models import load_checkpoint, resolve_source
from odelt.schedules import (AMEDSpec, AMEDStudent, LD3Student, LearnConfig, StepSpec, best_single_length, eval_rmse,
                             learn_amed, learn_ld3, make_pairs, search_lengths, split, uniform_grid)

GROUP = "schedules"


def _setup(quick: bool, smoke: bool = False):
    source = os.environ.get("ODELT_BENCH_DIGITS", "builtin:digits")
    model = load_checkpoint(source).eval()
    key = file_hash(resolve_source(source))
    cfg = LearnConfig(iters=5, n_pairs=24, n_train=16) if smoke else LearnConfig(iters=100 if quick else 300)
    train, val = split(make_pairs(model, cfg.n_pairs, cfg.seed, key=key), cfg.n_train)
    held = make_pairs(model, 16 if smoke else 128 if quick else 256, 0, held_out=True, key=key)
    return model, source, cfg, train, val, held


def _ld3(model, solver, lengths, dt, cfg, train, val, held):
    student, hist = learn_ld3(model, StepSpec(solver, lengths, dt), train, val, cfg, progress=False)
    return eval_rmse(model, student, held), hist.best_val, student


def _uniform(model, solver, lengths, dt, held) -> float:
    return eval_rmse(model, LD3Student(StepSpec(solver, lengths, dt), uniform_grid(len(lengths)), False), held)


def _init_choice(model, solver: str, val) -> str | int:
    """The shortcut mode better at the uniform NFE-4 grid on validation (what `--dt-base auto` does)."""
    full = model.config.depth
    steps = 2 if solver == "midpoint" else 4
    return min(("step", 7), key=lambda dt: _uniform(model, solver, (full,) * steps, dt, val))


def ld3_figures(model, cfg, train, val, held, quick: bool) -> tuple[dict, float]:
    out: dict = {}
    full = model.config.depth
    solvers = ("euler",) if quick else ("euler", "ipndm")
    best_euler = None
    for solver in solvers:
        per_mode = {}
        modes = ("step", 7) if not quick else (_init_choice(model, solver, val),)
        for dt in modes:
            held_err, val_err, student = _ld3(model, solver, (full,) * 4, dt, cfg, train, val, held)
            base = _uniform(model, solver, (full,) * 4, dt, held)
            tag = "step" if dt == "step" else "fixed7"
            out[f"dt_{solver}_nfe4_uniform_rmse_{tag}"] = base
            out[f"dt_{solver}_nfe4_ld3_rmse_{tag}"] = held_err
            per_mode[tag] = (val_err, held_err, base, student)
        chosen = min(per_mode, key=lambda k: per_mode[k][0])        # LD3: by validation error
        ld3_err = per_mode[chosen][1]
        base_err = min(v[2] for v in per_mode.values())              # baseline: its best held-out
        prefix = "ld3_err_ratio_nfe4" if solver == "euler" else f"ld3_err_ratio_nfe4_{solver}"
        out[prefix] = ld3_err / base_err
        out[f"ld3_{solver}_nfe4_dt_mode"] = chosen
        out[f"ld3_{solver}_nfe4_grid"] = [round(t, 4) for t in per_mode[chosen][3].plan().ts.tolist()]
        if solver == "euler":
            best_euler = (ld3_err, "step" if chosen == "step" else 7)
    return out, best_euler


def amed_figures(model, cfg, train, val, held, quick: bool) -> dict:
    out: dict = {}
    full = model.config.depth
    hosts = ("ipndm", "euler") if quick else ("ipndm", "euler", "amed")
    for host in hosts:
        # the plain host at its better shortcut mode (chosen on validation) is the baseline
        dt = _init_choice(model, host if host != "amed" else "midpoint", val)
        spec = AMEDSpec(host, (full,) * 4, dt)
        base = eval_rmse(model, AMEDStudent(spec, uniform_grid(2)), held)   # r=1/2, c=1: the plain host
        student, _ = learn_amed(model, spec, train, val, cfg, progress=False)
        err = eval_rmse(model, student, held)
        name = {"ipndm": "amed_err_ratio_nfe4", "euler": "amed_err_ratio_nfe4_euler",
                "amed": "amed_solver_err_ratio_nfe4_vs_midpoint"}[host]
        out[name] = err / base
        out[f"amed_{host}_nfe4_rmse"] = err
        out[f"amed_{host}_nfe4_base_rmse"] = base
        out[f"amed_{host}_nfe4_dt_mode"] = "step" if dt == "step" else "fixed7"
    return out


def length_figures(model, cfg, train, val, held, target: float, dt, quick: bool) -> dict:
    full_blocks = 4 * model.config.depth
    out: dict = {"length_target_rmse": target, "length_full_blocks": full_blocks}
    step = model.config.depth_group
    smallest = 4 * min(model.config.lengths)
    budgets = range(max(smallest, full_blocks // 4), full_blocks, 2 * step if quick else step)
    found, budget = None, None
    for budget in budgets:
        results = search_lengths(model, "euler", budget, train, val, cfg, dt_mode=dt, keep=1 if quick else 2,
                                 progress=False)
        best = min(results, key=lambda r: r.val_rmse)              # chosen by validation
        err = eval_rmse(model, best.student, held)
        out[f"length_b{budget}_rmse"] = err
        out[f"length_b{budget}_lengths"] = list(best.lengths)
        if err <= target:
            found = best
            break
    # the baseline at the same budget: the best single length, grid learned as well
    single = min(best_single_length(model, "euler", budget, train, val, cfg, dt, progress=False),
                 key=lambda r: r.val_rmse)
    out[f"length_b{budget}_single_rmse"] = eval_rmse(model, single.student, held)
    out[f"length_b{budget}_single_lengths"] = list(single.lengths)
    out["length_schedule_block_frac"] = (found.blocks / full_blocks) if found else float("nan")
    return out


def run(quick: bool = False, smoke: bool = False) -> dict:
    torch.set_num_threads(1)      # small models: threads only add contention on the 2-core CI box
    t0 = time.time()
    model, source, cfg, train, val, held = _setup(quick, smoke)
    out: dict = {"schedules_model": source, "schedules_n_held_out": len(held),
                 "schedules_teacher_seconds": round(time.time() - t0, 1)}
    t1 = time.time()
    ld3, (target, dt) = ld3_figures(model, cfg, train, val, held, quick)
    out.update(ld3)
    t2 = time.time()
    out.update(amed_figures(model, cfg, train, val, held, quick))
    t3 = time.time()
    out.update(length_figures(model, cfg, train, val, held, target, dt, quick))
    out.update({"schedules_ld3_seconds": round(t2 - t1, 1), "schedules_amed_seconds": round(t3 - t2, 1),
                "schedules_length_seconds": round(time.time() - t3, 1)})
    return out


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    print(json.dumps(run(ap.parse_args().quick), indent=1))
