"""The runtime: numpy-only ODE time stepping over exported bundles (ONNX Runtime, TensorRT).

Never imports torch (tested): a device needs numpy and one backend. Heavy backend libraries are
imported only when a backend is opened.
"""

from odelt.ode.heuristics import heuristic_schedule, make_grid, resolve_schedule
from odelt.ode.schedule import Schedule, load_schedule, save_schedule
from odelt.ode.solvers import SOLVER_INFO, SOLVERS, nfe_for

__all__ = ["SOLVERS", "SOLVER_INFO", "nfe_for", "Schedule", "load_schedule", "save_schedule",
           "heuristic_schedule", "make_grid", "resolve_schedule"]
