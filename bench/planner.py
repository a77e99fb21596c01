"""Bench group `planner`: how well the profile predicts the latency of the plans it chooses.

On builtin:digits: export, quantize (int8), schedules, ORT engines, profile, quality table (the
demo's stages, in a temporary folder), then for budgets spread over the candidates' predicted
range: choose a plan, run it, and compare measured with predicted latency per batch.

    planner_latency_pred_err = max over budgets of |measured - predicted| / measured  (target <= 0.15)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from odelt.exporter.bundle import load_manifest
from odelt.pipeline import demo
from odelt.runtime.planner import choose
from odelt.runtime.plans import load_candidates
from odelt.runtime.profile import call_cost


def _prepare(opts: demo.DemoOptions):
    from odelt.exporter.verify import model_for_bundle

    log = lambda msg: None  # noqa: E731
    manifest = demo.stage_export(opts, log)
    demo.stage_quantize(opts, manifest, log)
    model = model_for_bundle(load_manifest(manifest.root))
    schedules = demo.stage_schedules(opts, manifest, model, log)
    demo.stage_build(opts, manifest, log)
    prof = demo.stage_profile(opts, manifest, log)
    demo.stage_quality(opts, manifest, model, schedules, log)
    return load_manifest(manifest.root), prof


def run(quick: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        opts = demo.DemoOptions(out=Path(tmp), quick=quick, quality_n=32 if quick else 128, calib_samples=8)
        manifest, prof = _prepare(opts)
        candidates, cost = load_candidates(manifest), call_cost(prof)
        table = choose(candidates, float("inf"), cost, opts.batch, prof["step_overhead_ms"]).table
        ms = sorted(m for _, m in table)
        budgets = np.geomspace(ms[0] * 1.05, ms[-1] * 1.01, 4 if quick else 6)
        errors, out = [], {}
        for i, budget in enumerate(budgets):
            choice = choose(candidates, float(budget), cost, opts.batch, prof["step_overhead_ms"])
            _, measured = demo.measure_plan(manifest, choice.candidate, opts.batch, 64, prof.get("threads", 1))
            errors.append(abs(measured - choice.predicted_ms) / measured)
            out[f"planner_budget{i}_ms"] = round(float(budget), 3)
            out[f"planner_budget{i}_plan"] = choice.candidate.name
            out[f"planner_budget{i}_predicted_ms"] = round(choice.predicted_ms, 3)
            out[f"planner_budget{i}_measured_ms"] = round(measured, 3)
        out["planner_latency_pred_err"] = round(max(errors), 4)
        out["planner_candidates"] = len(candidates)
        return out
