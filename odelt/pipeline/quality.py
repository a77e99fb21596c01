"""The quality table (host side): every candidate plan run through the bundle's own graphs on
held-out noise, scored against the teacher. The device reads it via odelt.runtime.plans.

A candidate is (schedule, precision). Its samples come from the runtime sampler over the ONNX
Runtime backend at that precision, so the error includes what FP16/INT8 cost; the teacher is
128 full-length Euler steps of the PyTorch model from the same noise (odelt.schedules.problem),
on a seed stream that schedule learning never draws from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from odelt.exporter.bundle import Bundle
from odelt.fileio import write_json_atomic
from odelt.runtime.backend import open_backend
from odelt.runtime.plans import FORMAT, QUALITY, call_lengths, schedule_path
from odelt.runtime.sampler import Sampler
from odelt.runtime.schedule import Schedule, save_schedule


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def install_schedules(manifest: Bundle, schedules: Sequence[Schedule]) -> dict[str, Schedule]:
    """Copy schedules into BUNDLE/schedules/ (validated against the bundle); name -> schedule."""
    out = {}
    model_hash = manifest.model_hash
    for s in schedules:
        s.check_fits(model_hash, manifest.lengths)
        name = _safe(s.name or f"{s.method}-{s.solver}-{s.nfe}")
        if s.method == "heuristic":  # heuristic names leave the length out; one file per length
            name += "-l" + "-".join(str(n) for n in sorted(set(s.lengths)))
        save_schedule(s, schedule_path(manifest, name))
        out[name] = s
    return out


def _fd(samples: np.ndarray) -> float | None:
    if samples.shape[1:] != (1, 8, 8):
        return None                    # FD-digits is defined for digits-shaped samples only
    from odelt.models.classifier import fd_digits
    return float(fd_digits(samples))


def quality_rows(manifest: Bundle, model, schedules: dict[str, Schedule], precisions: Sequence[str],
                 n: int = 128, seed: int = 0, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Held-out RMSE to the teacher and FD-digits for every (schedule, precision)."""
    from odelt.schedules.problem import make_pairs

    key = manifest.model_hash
    pairs = make_pairs(model, n, seed, held_out=True, key=key)
    z, y, teacher = pairs.z.numpy(), pairs.y.numpy().astype(np.int32), pairs.x.numpy()
    rows = []
    for precision in precisions:
        with open_backend("ort", manifest, precision=precision) as be:
            for name, s in schedules.items():
                if progress:
                    progress(f"{name} {precision}")
                x, _ = Sampler(be, manifest, s).sample(z, y)
                rows.append({"name": f"{name}-{precision}", "schedule": name, "solver": s.solver,
                             "precision": precision, "error": float(np.sqrt(np.mean((x - teacher) ** 2))),
                             "fd": _fd(x), "call_lengths": list(call_lengths(s))})
    return rows


def write_quality(manifest: Bundle, rows: list[dict], n: int, seed: int) -> Path:
    data = {"format": FORMAT, "held_out": {"n": n, "seed": seed, "teacher": "euler-128-full-length"},
            "rows": rows}
    return write_json_atomic(manifest.root / QUALITY, data)
