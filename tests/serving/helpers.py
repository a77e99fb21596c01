"""A tiny bundle with what the sampler model reads: schedules, a quality table, this device's profile."""

from __future__ import annotations

import json
from pathlib import Path

from tests.models_zoo import TINY
# (schedule spec, length): the plans of the synthetic quality table, cheapest first. Their errors are
# made up (decreasing with cost), which is all the planner needs to pick between them.
PLANS = (("uniform:euler:1", 2), ("uniform:euler:2", 4), ("uniform:euler:4", 4), ("cosine:heun:4", 4))


def make_serving_bundle(root: Path) -> Path:
    import torch

    from odelt.exporter.bundle import open_bundle
    from odelt.exporter.export import ExportOptions, export_bundle
    from odelt.exporter.iospec import BatchRange
    from odelt.models import DiT
    from odelt.runtime.heuristics import resolve_schedule
    from odelt.runtime.plans import FORMAT, QUALITY, call_lengths
    from odelt.runtime.profile import profile_bundle, save_profile
    from odelt.runtime.schedule import save_schedule

    torch.manual_seed(0)
    dit = DiT(TINY).eval()
    with torch.no_grad():   # upstream zero-inits the final layer: randomise it, or velocities are 0
        for p in dit.final.parameters():
            p.normal_(0.0, 0.3)
    export_bundle(dit, root, ExportOptions(layouts=("segments",), batch=BatchRange(1, 4, 8)),
                  source="test:tiny", source_hash="tinyhash")
    rows = []
    for i, (spec, length) in enumerate(PLANS):
        name = spec.replace(":", "-") + f"-l{length}"
        schedule = resolve_schedule(spec, length)
        save_schedule(schedule, root / "schedules" / f"{name}.json")
        rows.append({"name": name, "schedule": name, "solver": schedule.solver, "precision": "fp32",
                     "error": 1.0 / (i + 1), "fd": None, "call_lengths": list(call_lengths(schedule))})
    (root / QUALITY).write_text(json.dumps({"format": FORMAT, "held_out": {"n": 0, "seed": 0, "teacher": "none"},
                                            "rows": rows}))
    manifest = open_bundle(root)
    save_profile(manifest, profile_bundle(manifest, "ort", (1, 8), repeats=5, time_graphs=False))
    return root
