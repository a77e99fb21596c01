"""The planner on a synthetic profile and quality table, with exact expected choices."""

import pytest

from odelt.errors import BudgetError
from odelt.runtime.planner import Candidate, choose, pareto_front, predict_ms

# Synthetic profile: a call costs 1 ms per block at fp32, half that at int8, plus 0.5 ms fixed.
COST = {"fp32": 1.0, "int8": 0.5}


def call_ms(precision, length, batch):
    return 0.5 + COST[precision] * length * batch


PLANS = [
    Candidate("euler-1-l8", "uniform", "euler", (8,), "fp32", error=0.30),
    Candidate("ld3-4-l8", "ld3", "euler", (8, 8, 8, 8), "fp32", error=0.05),
    Candidate("ld3-4-l8-int8", "ld3", "euler", (8, 8, 8, 8), "int8", error=0.06),
    Candidate("mixed-4", "ld3-len", "euler", (2, 4, 8, 8), "int8", error=0.08),
    Candidate("ld3-2-l4", "ld3", "euler", (4, 4), "int8", error=0.15),
]


def test_prediction_sums_every_call_and_step_overhead():
    # (0.5 + 1) + (0.5 + 2) + 2*(0.5 + 4) = 13, plus 4 steps x 0.25 ms
    assert predict_ms(PLANS[3], call_ms, batch=1, step_overhead_ms=0.25) == pytest.approx(14.0)
    # ... plus the runtime's host work per batch
    assert predict_ms(PLANS[3], call_ms, 1, step_overhead_ms=0.25, sample_overhead_ms=0.5) == pytest.approx(14.5)


def test_per_batch_overhead_can_tip_a_choice():
    # ld3-2-l4 int8 needs 5 ms of calls: it fits a 5.2 ms budget until 0.3 ms of per-batch host work
    assert choose(PLANS, 5.2, call_ms).candidate.name == "ld3-2-l4"
    with pytest.raises(BudgetError):
        choose(PLANS, 5.2, call_ms, 1, 0.0, 0.3)


@pytest.mark.parametrize("budget,expected", [
    (100.0, "ld3-4-l8"),        # everything fits: lowest error wins
    (34.0, "ld3-4-l8"),         # fp32 x4 needs 34 ms exactly -> fits at the boundary
    (33.9, "ld3-4-l8-int8"),    # ... and no longer: int8 (18 ms) is the best that fits
    (17.0, "mixed-4"),          # int8 full length needs 18 ms; the mixed-length plan needs 13
    (12.0, "ld3-2-l4"),         # only fp32 1 step (8.5 ms, error .30) and l4 x2 int8 (5 ms, .15) fit
])
def test_choose_exact(budget, expected):
    assert choose(PLANS, budget, call_ms).candidate.name == expected


def test_budget_below_cheapest_names_minimum():
    with pytest.raises(BudgetError, match=r"below the cheapest plan at batch 1: ld3-2-l4 needs 5 ms"):
        choose(PLANS, 4.9, call_ms)
    with pytest.raises(BudgetError, match="--budget-ms: expected a number > 0, found 0"):
        choose(PLANS, 0, call_ms)


def test_batch_scales_prediction():
    # at batch 8 both full-length 4-step plans are over 100 ms (258, 130); mixed lengths need 90
    assert choose(PLANS, 100.0, call_ms, batch=8).candidate.name == "mixed-4"


def test_pareto_front():
    table = choose(PLANS, 100.0, call_ms).table
    assert [c.name for c, _ in pareto_front(table)] == ["ld3-2-l4", "mixed-4", "ld3-4-l8-int8", "ld3-4-l8"]
