"""The PyTorch reference sampler: the same solvers (odelt.ode.solvers) driven with torch
tensors over the PyTorch model (through odelt.models.sampling.TorchVelocity), on the same noise, labels, lengths and shortcut levels as the
runtime. Parity tests and the benchmark compare the runtime against it.

This is the one module under odelt.runtime that needs torch; it imports it when called, so
importing odelt.runtime stays torch-free.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from odelt.ode.schedule import Schedule
from odelt.ode.solvers import SOLVERS


def torch_sample(dit: Any, schedule: Schedule, x0: np.ndarray, y: np.ndarray,
                 guidance_scale: float | None = None) -> np.ndarray:
    """Integrate from x0 (numpy, (B,C,H,W)) with the PyTorch DiT; guidance mixes two eager calls."""
    import torch

    from odelt.models.sampling import TorchVelocity

    labels = torch.from_numpy(np.asarray(y, np.int32)).long()
    f = TorchVelocity(dit, labels, schedule.lengths, schedule.dt_base, guidance_scale)
    with torch.no_grad():
        x = SOLVERS[schedule.solver](f, torch.from_numpy(np.array(x0, np.float32)), list(schedule.t_grid),
                                     **schedule.solver_kwargs())
    return x.numpy()
