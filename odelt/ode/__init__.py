"""The math floor: ODE solvers and time grids, numpy and torch alike."""
