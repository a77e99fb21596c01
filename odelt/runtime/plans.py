"""Candidate plans stored in a bundle: the quality table the planner chooses from.

`quality.json` (written on the host by odelt.pipeline.quality; read here, numpy only)::

    {"format": "odelt-quality/1", "held_out": {"n": int, "seed": int, "teacher": str},
     "rows": [{"name", "schedule", "solver", "precision", "error", "fd", "call_lengths": [int, ...]}]}

`schedule` names a file under `BUNDLE/schedules/`, copied there so that a device needs nothing
but the bundle. `call_lengths` is the length of every network call the schedule makes, in order
(a Heun step calls twice, at its step's length), found by running the solver on a stand-in model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from odelt.errors import ConfigError
from odelt.exporter.bundle import Bundle
from odelt.fileio import read_json
from odelt.runtime.planner import Candidate
from odelt.runtime.schedule import Schedule, load_schedule
from odelt.runtime.solvers import SOLVERS

FORMAT = "odelt-quality/1"
QUALITY = "quality.json"


def call_lengths(schedule: Schedule) -> tuple[int, ...]:
    """The length of every network call `schedule` makes, from a dry run on a zero velocity."""
    seen: list[int] = []

    def f(x: np.ndarray, t: Any, n: int) -> np.ndarray:
        seen.append(schedule.lengths[n])
        return np.zeros_like(x)

    SOLVERS[schedule.solver](f, np.zeros((1, 1), np.float32), list(schedule.t_grid), **schedule.solver_kwargs())
    return tuple(seen)


def schedule_path(manifest: Bundle, name: str) -> Path:
    return manifest.root / "schedules" / f"{name}.json"


def load_candidates(manifest: Bundle) -> list[Candidate]:
    path = manifest.root / QUALITY
    data = read_json(path, ConfigError, f"{manifest.root}: no quality table ({QUALITY}); expected one from "
                     "`odelt-export demo` or odelt.pipeline.quality.write_quality")
    if data.get("format") != FORMAT:
        raise ConfigError(f"{path}: expected format {FORMAT}, found {data.get('format')!r}")
    return [Candidate(r["name"], r["schedule"], r["solver"], tuple(r["call_lengths"]), r["precision"],
                      float(r["error"]), r.get("fd")) for r in data["rows"]]


def load_plan_schedule(manifest: Bundle, candidate: Candidate) -> Schedule:
    path = schedule_path(manifest, candidate.schedule)
    if not path.is_file():
        raise ConfigError(f"{manifest.root}: plan {candidate.name} needs schedules/{path.name}, which is missing")
    return load_schedule(path)
