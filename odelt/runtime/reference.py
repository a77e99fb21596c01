"""The PyTorch reference sampler: the same solvers (odelt.runtime.solvers) driven with torch
tensors over the PyTorch model, on the same noise, labels, lengths and shortcut levels as the
runtime. Parity tests and the benchmark compare the runtime against it.

This is the one module under odelt.runtime that needs torch; it imports it when called, so
importing odelt.runtime stays torch-free.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from odelt.runtime.schedule import Schedule
from odelt.runtime.solvers import SOLVERS


def torch_sample(dit: Any, schedule: Schedule, x0: np.ndarray, y: np.ndarray,
                 guidance_scale: float | None = None) -> np.ndarray:
    """Integrate from x0 (numpy, (B,C,H,W)) with the PyTorch DiT; guidance mixes two eager calls."""
    import torch

    labels = torch.from_numpy(np.asarray(y, np.int32)).long()
    null = torch.full_like(labels, dit.config.num_classes)

    def f(x: Any, t: Any, n: int) -> Any:
        b = x.shape[0]
        tt = torch.full((b,), float(t), dtype=torch.float32)
        d = torch.full((b,), schedule.dt_base[n], dtype=torch.int32)
        v = dit(x, tt, d, labels, schedule.lengths[n])
        if guidance_scale is None or guidance_scale == 1.0:
            return v
        v_null = dit(x, tt, d, null, schedule.lengths[n])
        return v_null + guidance_scale * (v - v_null)

    with torch.no_grad():
        x = SOLVERS[schedule.solver](f, torch.from_numpy(np.array(x0, np.float32)), list(schedule.t_grid),
                                     **schedule.solver_kwargs())
    return x.numpy()
