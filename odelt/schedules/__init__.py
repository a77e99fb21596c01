"""Learned few-step schedules, made offline and saved as small JSON artifacts: LD3 time grids
(ld3.py), AMED mid-points and step scales (amed.py) and per-step lengths (lengths.py), all fitted on
teacher pairs (problem.py) by one training loop (learn.py); grids.py holds the fixed grids, make.py
the `schedule` command's stages, evaluate.py the held-out errors, quality.py the quality table. The
runtime reads the artifacts (odelt.ode.schedule) without torch."""

from odelt.lazy import face

__all__, __getattr__, __dir__ = face(__name__, {
    "odelt.schedules.make": ("Request", "learn_schedule"),
    "odelt.schedules.learn": ("LearnConfig", "eval_rmse"),
    "odelt.schedules.ld3": ("LD3Student", "StepSpec", "learn_ld3", "uniform_grid"),
    "odelt.schedules.amed": ("AMEDSpec", "AMEDStudent", "learn_amed"),
    "odelt.schedules.lengths": ("search_lengths", "best_single_length"),
    "odelt.schedules.problem": ("Pairs", "make_pairs", "split"),
    "odelt.schedules.evaluate": ("evaluate",),
    "odelt.schedules.quality": ("install_schedules", "quality_rows", "write_quality"),
})
