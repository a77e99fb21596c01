"""The runtime's host overhead (bench group `runtime`), run by bench/runtime.py in a torch-free
process: `python bench/overhead.py BUNDLE REPEATS` prints one JSON object.

  runtime_overhead_frac        time outside backend calls / wall time of Sampler.sample, batch 1,
                               uniform:euler:8, one ONNX Runtime thread, sums over repeats
  runtime_overhead_floor_frac  the same for the bare Euler loop over the same backend (one timed call
                               per step, nothing else), alternated with the sampler in every repeat
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from odelt.bundle import open_bundle  # noqa: E402
from odelt.runtime import SOLVERS, Sampler, make_labels, make_noise, open_backend, resolve_schedule  # noqa: E402


def overhead(bundle, repeats: int) -> dict:
    """The sampler, and side by side the floor: the bare Euler loop over the same backend (one timed
    call per step, no feeds bookkeeping, statistics or NaN check)."""
    schedule = resolve_schedule("uniform:euler:8", max(bundle.lengths))
    x0, y = make_noise(0, 1, (bundle.config.in_channels, 8, 8)), make_labels(1, bundle.config.num_classes)
    with open_backend("ort", bundle, threads=1) as be:
        sampler = Sampler(be, bundle, schedule)
        bare, inside = _bare_euler(be, schedule, y)
        for _ in range(5):
            sampler.sample(x0, y)
            bare(x0)
        host, wall = [0.0, 0.0], [0.0, 0.0]
        for _ in range(repeats):
            t0 = time.perf_counter()
            _, st = sampler.sample(x0, y)
            t1 = time.perf_counter()
            inside[0] = 0.0
            bare(x0)
            t2 = time.perf_counter()
            host[0] += t1 - t0 - st.backend_s
            wall[0] += t1 - t0
            host[1] += t2 - t1 - inside[0]
            wall[1] += t2 - t1
    return {"runtime_overhead_frac": round(host[0] / wall[0], 4),
            "runtime_overhead_floor_frac": round(host[1] / wall[1], 4),
            "runtime_host_us_per_image_b1": round(1e6 * host[0] / repeats, 1),
            "runtime_digits_ms_per_image_b1": round(1e3 * wall[0] / repeats, 3)}


def _bare_euler(be, schedule, y):
    feeds = {"t": np.zeros(1, np.float32), "dt_base": np.zeros(1, np.int32),
             "l": np.full(1, schedule.lengths[0], np.int32), "y": np.asarray(y, np.int32)}
    grid, inside, clock = [np.float32(t) for t in schedule.t_grid], [0.0], time.perf_counter

    def f(x, t, n):
        feeds["x"] = x
        t0 = clock()
        v = be.infer(feeds)["velocity"]
        inside[0] += clock() - t0
        return v
    return (lambda x0: SOLVERS["euler"](f, x0, grid)), inside



if __name__ == "__main__":
    assert "torch" not in sys.modules
    print(json.dumps(overhead(open_bundle(sys.argv[1]), int(sys.argv[2]))))
