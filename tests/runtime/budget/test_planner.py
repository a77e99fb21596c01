"""The planner on a synthetic profile and quality table, with exact expected choices."""

import pytest

from odelt.errors import BudgetError, ConfigError
from odelt.runtime.budget.planner import Candidate, choose, pareto_front, predict_ms

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


# -- the decoder stage: a per-batch cost, and an axis of the plan ---------------------------------
# Decoding a batch of b images costs 100 ms x b with the SD-VAE and 10 ms x b with TAESD.
DECODE = {"sd": 100.0, "taesd": 10.0}


def decode_ms(precision, kind, batch):
    return DECODE[kind] * batch * (0.5 if precision == "fp16" else 1.0)


def decoding(c, kind, error, precision="fp32"):
    return Candidate(f"{c.name}+{kind}", c.schedule, c.solver, c.lengths, c.precision, error, c.fd, kind, precision)


def test_decoder_cost_is_counted_once_per_batch():
    c = decoding(PLANS[1], "taesd", 0.1)                 # 4 calls of 8.5 ms
    assert predict_ms(c, call_ms, 1, decode_ms=decode_ms) == pytest.approx(34.0 + 10.0)     # not 4 x 10
    assert predict_ms(c, call_ms, 2, decode_ms=decode_ms) == pytest.approx(4 * 16.5 + 20.0)
    assert predict_ms(PLANS[1], call_ms, 1, decode_ms=decode_ms) == pytest.approx(34.0)    # latents only
    with pytest.raises(ConfigError, match="decodes with taesd: expected a profile with decoder timings"):
        predict_ms(c, call_ms, 1)


# ld3-4-l8 decoded by the SD-VAE is the best image (error .10); with TAESD .20; the 1-step plan .60
DECODED = [decoding(PLANS[1], "sd", 0.10), decoding(PLANS[1], "taesd", 0.20),
           decoding(PLANS[0], "sd", 0.60), decoding(PLANS[0], "taesd", 0.62)]


@pytest.mark.parametrize("budget,expected", [
    (134.0, "ld3-4-l8+sd"),         # 34 ms of sampling + 100 ms of SD-VAE: fits exactly
    (133.9, "ld3-4-l8+taesd"),      # tight: the cheaper decoder (44 ms), the better image that fits
    (43.9, "euler-1-l8+taesd"),     # 8.5 + 10
])
def test_choice_flips_to_the_cheaper_decoder_when_the_budget_is_tight(budget, expected):
    assert choose(DECODED, budget, call_ms, decode_ms=decode_ms).candidate.name == expected


def test_the_better_decoder_wins_when_it_fits_even_if_slower():
    # TAESD's image error .70 here: the SD-VAE 1-step plan (.60, 108.5 ms) beats it under 133 ms
    worse = [DECODED[0], decoding(PLANS[1], "taesd", 0.70), DECODED[2]]
    assert choose(worse, 133.0, call_ms, decode_ms=decode_ms).candidate.name == "euler-1-l8+sd"


def test_decoder_share_of_end_to_end_latency():
    choice = choose(DECODED, 133.9, call_ms, decode_ms=decode_ms)
    assert choice.decode_share() == pytest.approx((10.0, 10.0 / 44.0))
    assert choice.decode_share(DECODED[0]) == pytest.approx((100.0, 100.0 / 134.0))
    assert choose(PLANS, 100.0, call_ms).decode_share() is None          # latents only: no decoder
    with pytest.raises(BudgetError, match=r"euler-1-l8\+taesd needs 18.5 ms \(the minimum achievable latency, "
                                          r"10 ms of it decoding with taesd\)"):
        choose(DECODED, 18.0, call_ms, decode_ms=decode_ms)


def test_decoder_precision_is_part_of_the_prediction():
    half = decoding(PLANS[1], "sd", 0.11, "fp16")
    assert predict_ms(half, call_ms, 1, decode_ms=decode_ms) == pytest.approx(34.0 + 50.0)
