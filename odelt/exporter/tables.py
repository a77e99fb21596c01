"""Precomputed modulation tables: for a fixed time schedule, class and length, every output of the
conditioning graph at every step, stored in the bundle so a device needs no conditioning weights.
The format is documented in bundle.py (manifest "tables")."""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

from odelt.errors import ScheduleError
from odelt.bundle.bundle import Bundle, open_bundle
from odelt.fileio import save_with
from odelt.ode.schedule import Schedule
from odelt.ode.solvers import SOLVER_INFO, SOLVERS

# (t (1,), dt_base (1,), y (1,), l (1,)) -> {output name: (rows, width)}
Conditioner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def onnx_conditioner(manifest: Bundle) -> Conditioner:
    """The bundle's own conditioning graph in ONNX Runtime (CPU): the numbers a device would compute."""
    from odelt.onnxrt import open_session

    sess = open_session(manifest.graph_path("cond"))
    names = [o.name for o in sess.get_outputs()]
    return lambda feed: dict(zip(names, sess.run(None, feed)))


def torch_conditioner(dit, manifest: Bundle) -> Conditioner:
    """The same outputs from the PyTorch model, through the export wrapper."""
    import torch

    from odelt.exporter.wrappers import ConditioningGraph

    spec = manifest.graph("cond")
    mods = sum(1 for o in spec.outputs if o.name.startswith("mod"))
    wrapper = ConditioningGraph(dit, mods, manifest.guidance)

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            outs = wrapper(*(torch.from_numpy(feed[k]) for k in ("t", "dt_base", "y", "l")))
        return {o.name: v.numpy() for o, v in zip(spec.outputs, outs)}

    return run


def _check_schedule(manifest: Bundle, t: np.ndarray, dt_base: np.ndarray, length: int, y: int | None) -> None:
    if "segments" not in manifest.layouts:
        raise ScheduleError(f"{manifest.root}: modulation tables need the segments layout (a conditioning graph)")
    if length not in manifest.lengths:
        raise ScheduleError(f"length {length} not exported; expected one of {list(manifest.lengths)}")
    if t.ndim != 1 or t.shape != dt_base.shape or t.size == 0:
        raise ScheduleError(f"expected equal-length 1-D t and dt_base, found shapes {t.shape} and {dt_base.shape}")
    if not np.all((t >= 0) & (t <= 1)):
        raise ScheduleError(f"t must lie in [0, 1], found [{t.min():g}, {t.max():g}]")
    if not np.all((dt_base >= 0) & (dt_base <= 7)):
        raise ScheduleError(f"dt_base must lie in 0..7, found {sorted(set(dt_base.tolist()))}")
    classes = manifest.config.num_classes
    if y is not None and not 0 <= y <= classes:
        raise ScheduleError(f"class must be in [0, {classes}] ({classes} = null), found {y}")


def build_table(manifest: Bundle, t: Sequence[float], dt_base: Sequence[int], length: int,
                y: int | None = None, conditioner: Conditioner | None = None) -> dict[str, np.ndarray]:
    """{output name: (S, rows, width) float32} for steps (t[s], dt_base[s]) at `length`, class y
    (None = the null class); rows = 2 (class, then null) when the bundle has cfg, else 1."""
    t_arr, dt_arr = np.asarray(t, dtype=np.float32), np.asarray(dt_base, dtype=np.int32)
    _check_schedule(manifest, t_arr, dt_arr, length, y)
    run = conditioner or onnx_conditioner(manifest)
    label = manifest.config.num_classes if y is None else y
    steps = [run({"t": t_arr[s:s + 1], "dt_base": dt_arr[s:s + 1], "y": np.array([label], np.int32),
                  "l": np.array([length], np.int32)}) for s in range(t_arr.size)]
    return {name: np.stack([step[name] for step in steps]).astype(np.float32) for name in steps[0]}


def add_table(bundle: str | os.PathLike, name: str, t: Sequence[float], dt_base: Sequence[int], length: int,
              y: int | None = None, conditioner: Conditioner | None = None) -> dict:
    """Build a table and store it as tables/<name>.npz; the manifest is rewritten atomically."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ScheduleError(f"table name must be letters, digits, '-' or '_', found {name!r}")
    manifest = open_bundle(bundle)
    table = build_table(manifest, t, dt_base, length, y, conditioner)
    rel = f"tables/{name}.npz"
    save_with(manifest.root / rel, lambda tmp: np.savez(tmp, **table), suffix=".npz")  # type: ignore[arg-type]
    entry = {"file": rel, "length": int(length), "y": y, "cfg": manifest.guidance,
             "rows": int(next(iter(table.values())).shape[1]),
             "t": [float(v) for v in np.asarray(t, np.float32)], "dt_base": [int(v) for v in dt_base],
             "outputs": list(table)}
    manifest.update("tables", name, entry, files=[rel])
    return entry


# -- the stage: what `odelt-export tables` runs ------------------------------------------------------

def schedule_steps(schedule: Schedule) -> list[tuple[float, int, int]]:
    """(t, length, dt_base) of every network call `schedule` makes, from a dry run of its solver on a
    zero velocity, with the times in float32 as the runtime sampler feeds them (tables are looked up
    by those float32 values)."""
    info = SOLVER_INFO[schedule.solver]
    if not info.calls_per_step:
        raise ScheduleError(f"schedule {schedule.name or '?'}: solver {schedule.solver} is adaptive (its times "
                            "depend on the sample); modulation tables need a fixed-grid solver")
    kwargs = schedule.solver_kwargs()
    for key in ("t_eval", "t_mid", "scale"):
        if key in kwargs:
            kwargs[key] = [np.float32(v) for v in kwargs[key]]
    seen: list[tuple[float, int, int]] = []

    def f(x: np.ndarray, t: Any, n: int) -> np.ndarray:
        seen.append((float(np.float32(t)), int(schedule.lengths[n]), int(schedule.dt_base[n])))
        return np.zeros_like(x)

    SOLVERS[schedule.solver](f, np.zeros((1, 1), np.float32), [np.float32(v) for v in schedule.t_grid], **kwargs)
    return seen


def table_classes(manifest: Bundle, classes: Sequence[int] | None) -> list[int | None]:
    """The classes to tabulate (None = the null class): given ones, else what generate samples (every
    class of a conditional model, the null class of an unconditional one; odelt.ode.seeds)."""
    if classes:
        return [None if y == manifest.null_class else int(y) for y in dict.fromkeys(classes)]
    k = manifest.config.num_classes
    return [None] if k <= 1 else list(range(k))


def add_schedule_tables(bundle: str | os.PathLike, schedule: Schedule, classes: Sequence[int] | None = None,
                        guidance_scale: float | None = None, conditioner: Conditioner | None = None,
                        progress: Callable[[str], None] | None = None) -> list[str]:
    """Tables for every (length, class) `schedule` runs at: each holds the steps at that length, so
    the sampler feeds them instead of running the conditioning graph. Returns the table names."""
    manifest = open_bundle(bundle)
    schedule.check_fits(manifest.model_hash, manifest.lengths, guidance_scale)
    if guidance_scale not in (None, 1.0) and not manifest.guidance:
        raise ScheduleError(f"--guidance-scale {guidance_scale:g}: this bundle has no cfg input, so guidance runs "
                            "on the host with mixed class/null rows, which never use tables; export with "
                            "--guidance or leave the scale at 1")
    steps = schedule_steps(schedule)
    conditioner = conditioner or onnx_conditioner(manifest)      # one session for every table
    base = "".join(c if c.isalnum() or c in "-_" else "-" for c in (schedule.name or schedule.method))
    names = []
    for length in sorted({n for _, n, _ in steps}):
        at = list(dict.fromkeys((t, d) for t, n, d in steps if n == length))
        for y in table_classes(manifest, classes):
            name = f"{base}-l{length}-{'null' if y is None else f'y{y}'}"
            if progress:
                progress(name)
            add_table(manifest.root, name, [t for t, _ in at], [d for _, d in at], length, y, conditioner)
            names.append(name)
    return names
