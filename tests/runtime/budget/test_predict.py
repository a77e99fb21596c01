"""One latency model: every prediction of the budget engine (planner, tracker, anytime, stream) is
predict.Predictor's, on synthetic profiles with exact answers; one step-to-call rule."""

import numpy as np
import pytest

from odelt import validate
from odelt.errors import ConfigError
from odelt.ode.heuristics import heuristic_schedule
from odelt.ode.solvers import SOLVER_INFO
from odelt.runtime.budget.anytime import Deadline
from odelt.runtime.budget.planner import Candidate, choose
from odelt.runtime.budget.predict import MEDIAN, Predictor, QuantilePredictor, tracked_ms
from odelt.runtime.budget.tracker import Replanner
from tests.runtime.fake_clock import decoder_timings, synthetic_profile

A = Candidate("a-4xl8", "a", "euler", (8, 8, 8, 8), "fp32", error=0.1)
B = Candidate("b-4xl2", "b", "euler", (2, 2, 2, 2), "fp32", error=0.2)


def test_the_old_name_is_the_same_class():
    assert QuantilePredictor is Predictor


def test_the_median_model_is_the_quantile_model_at_one_half():
    """q = 0.5: the spread is exactly zero (a call's median is its 0.5-quantile), so the
    prediction is the sum of the medians and the host work, to the last bit."""
    prof = synthetic_profile(step_ms=0.1, sample_ms=0.5)
    at = Predictor(prof, 1, MEDIAN)
    assert at.candidate(A) == at.median(A) == 4 * (8 + 0.1) + 0.5
    assert Predictor(prof, 1, 0.95).median(A) == at.median(A)          # the median does not depend on q
    assert Predictor(prof, 1, 0.95).candidate(A) == pytest.approx(32.9 + 1.8)   # spread sqrt(4 x 0.9^2)


def test_tracked_prediction_is_the_one_formula_everywhere():
    """The re-planner's Planned.at and Predictor.at are the same numbers for every tracked state."""
    at = Predictor(synthetic_profile(), 1, 0.95)
    rp = Replanner([A, B], at, budget_ms=40.0)
    states = [(1.0, 0.0, 0.0), (1.2, 0.0, 0.0), (0.9, 0.95, 2.0), (1.1, 1.3, 0.0), (1.0, 1.0, 8.5)]
    for planned in rp.by_quality:
        for state in states:
            assert planned.at(*state) == at.at(planned.candidate, *state)
    assert at.at(A) == at.candidate(A)                     # nothing observed: the quantile prediction
    assert tracked_ms(32.0, 33.8, 1.1, 1.2, 2.0) == pytest.approx(max(33.8 * 1.1, 32 * 1.2, 32 + 2))


def test_replanner_first_is_the_chooser():
    at = Predictor(synthetic_profile(), 1, 0.95)
    for budget in (11.0, 34.0, 40.0):
        rp = Replanner([B, A], at, budget_ms=budget)
        chosen = choose([B, A], budget, at)
        first = rp.first()
        assert first.candidate == chosen.candidate == rp.choice.candidate
        assert first.quantile_ms == chosen.predicted_ms == rp.choice.predicted_ms


def test_anytime_predicts_through_the_model():
    """Deadline's prediction of the remaining steps is Predictor.batch_ms of their calls (a Heun
    step calls twice), with the decode, at the batch's speed."""
    at = Predictor({**synthetic_profile(step_ms=0.1, sample_ms=0.5), "decoders": decoder_timings(sd=10.0)}, 1, 0.95)
    sched = heuristic_schedule("uniform", "heun", 4, 8)
    decode = at.decoding(Candidate("x", "x", "heun", (8,) * 8, "fp32", 0.0, decoder="sd"))
    ctrl = Deadline(sched, "fp32", at, 80.0, (2, 4, 8), (), decode)
    for lengths, speed in (((8, 8, 8), 1.0), ((4, 2, 2), 1.5), ((2,), 0.8)):
        calls = tuple(n for n in lengths for _ in range(2))
        assert ctrl._predict(lengths, speed) == at.batch_ms("fp32", calls, decode, speed)[1]
        med, q = at.batch_ms("fp32", calls, decode)
        assert ctrl._predict(lengths, speed) == pytest.approx(speed * q)
    # the timeline spreads the budget left after the host work and the decode over the steps' medians
    assert ctrl.timeline[-1] == pytest.approx(80.0 - 0.5 - decode[0])


@pytest.mark.parametrize("solver", sorted(SOLVER_INFO))
def test_call_lengths_match_a_dry_run_of_every_solver(solver):
    """Schedule.call_lengths: fixed-step solvers repeat each step's length calls_per_step times,
    which is exactly what the solver calls (counted by a dry run); adaptive ones are dry-run."""
    import odelt.ode.solvers as solvers

    sched = heuristic_schedule("uniform", solver, 4, 8).with_lengths(8)
    lengths = (8, 4, 2, 2)[:sched.steps]
    seen = []

    def f(x, t, n):
        seen.append(lengths[n])
        return np.zeros_like(x)

    solvers.SOLVERS[solver](f, np.zeros((1, 1), np.float32), list(sched.t_grid), **sched.solver_kwargs())
    assert sched.call_lengths(lengths) == tuple(seen)
    per = SOLVER_INFO[solver].calls_per_step
    if per:
        assert len(sched.call_lengths(lengths)) == per * len(lengths)


def test_quantile_is_checked_once_in_one_wording():
    assert validate.quantile("--quantile", "0.9") == 0.9
    for bad in (1.0, 0.4, "soon", True, float("nan")):
        with pytest.raises(ConfigError, match=r"^--quantile: expected a number in \[0.5, 1\), found "):
            validate.quantile("--quantile", bad)
