"""Learned few-step schedules, made offline and saved as small JSON artifacts: LD3 time grids
(ld3.py), AMED mid-points and step scales (amed.py) and per-step lengths (lengths.py), all fitted on
teacher pairs (problem.py) by one training loop (learn.py); grids.py holds the fixed grids, make.py
the `schedule` command's stages, evaluate.py the held-out errors. The runtime reads the artifacts
(odelt.ode.schedule) without torch."""
