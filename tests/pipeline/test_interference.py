"""The hindsight baseline's choice (odelt.pipeline.interference): exact answers on made-up runs."""

import pytest

from odelt.pipeline.interference import hindsight_best, loaded_figures


def _run(latency, rmse, hog=(1, 5), budget=10.0):
    return {"hog": list(hog), "budget_ms": budget, "latency_ms": latency, "rmse": rmse}


def test_loaded_figures_count_only_the_hogs_batches():
    r = _run([50, 9, 11, 9, 9, 50], [1.0, 0.2, 0.4, 0.2, 0.2, 1.0])
    assert loaded_figures(r) == (0.25, pytest.approx(0.25))


def test_the_best_fixed_plan_in_hindsight_missed_at_most_one_percent():
    front = {"cheap": _run([1] * 6, [0.3] * 6), "mid": _run([5] * 6, [0.2] * 6),
             "big": _run([9, 9, 11, 9, 9, 9], [0.1] * 6)}          # one loaded batch of four late
    assert hindsight_best(front) == ("mid", 0.0, pytest.approx(0.2))
    assert hindsight_best(front, max_miss=0.25) == ("big", 0.25, pytest.approx(0.1))
    assert hindsight_best({"big": front["big"]}) is None
