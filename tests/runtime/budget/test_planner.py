"""The planner on a synthetic profile and quality table, with exact expected choices.

The profile has no spread (every timing's p90 is its median), so the one latency model
(predict.Predictor) gives the sum of the medians at any quantile; tests/runtime/budget/
test_predict.py checks the spread term."""

import pytest

from odelt.errors import BudgetError, ConfigError
from odelt.runtime.budget.planner import Candidate, choose, pareto_front
from odelt.runtime.budget.predict import MEDIAN, Predictor

# Synthetic profile: a call costs 1 ms per block at fp32, half that at int8, plus 0.5 ms fixed.
COST = {"fp32": 1.0, "int8": 0.5}
# Decoding a batch of b images costs 100 ms x b with the SD-VAE and 10 ms x b with TAESD (FP16: half).
DECODE = {"sd": 100.0, "taesd": 10.0}
BATCHES = (1, 2, 8)


def _cell(ms):
    return {"median_ms": ms, "p90_ms": ms, "p99_ms": ms}


def profile(step_ms=0.0, sample_ms=0.0, decoders=True):
    calls = {p: {str(b): {str(n): _cell(0.5 + c * n * b) for n in (2, 4, 8)} for b in BATCHES} for p, c in COST.items()}
    prof = {"backend": "ort", "step_overhead_ms": step_ms, "sample_overhead_ms": sample_ms, "calls": calls}
    if decoders:
        prof["decoders"] = {p: {str(b): {k: _cell(v * b * (0.5 if p == "fp16" else 1.0)) for k, v in DECODE.items()}
                                for b in BATCHES} for p in ("fp32", "fp16")}
    return prof


def at(batch=1, **kw):
    return Predictor(profile(**kw), batch, MEDIAN)


PLANS = [
    Candidate("euler-1-l8", "uniform", "euler", (8,), "fp32", error=0.30),
    Candidate("ld3-4-l8", "ld3", "euler", (8, 8, 8, 8), "fp32", error=0.05),
    Candidate("ld3-4-l8-int8", "ld3", "euler", (8, 8, 8, 8), "int8", error=0.06),
    Candidate("mixed-4", "ld3-len", "euler", (2, 4, 8, 8), "int8", error=0.08),
    Candidate("ld3-2-l4", "ld3", "euler", (4, 4), "int8", error=0.15),
]


def test_prediction_sums_every_call_and_step_overhead():
    # (0.5 + 1) + (0.5 + 2) + 2*(0.5 + 4) = 13, plus 4 steps x 0.25 ms
    assert at(step_ms=0.25).candidate(PLANS[3]) == pytest.approx(14.0)
    # ... plus the runtime's host work per batch
    assert at(step_ms=0.25, sample_ms=0.5).candidate(PLANS[3]) == pytest.approx(14.5)
    # no spread in this profile: every quantile predicts the median
    assert Predictor(profile(), 1, 0.95).candidate(PLANS[3]) == pytest.approx(13.0)


def test_per_batch_overhead_can_tip_a_choice():
    # ld3-2-l4 int8 needs 5 ms of calls: it fits a 5.2 ms budget until 0.3 ms of per-batch host work
    assert choose(PLANS, 5.2, at()).candidate.name == "ld3-2-l4"
    with pytest.raises(BudgetError):
        choose(PLANS, 5.2, at(sample_ms=0.3))


@pytest.mark.parametrize("budget,expected", [
    (100.0, "ld3-4-l8"),        # everything fits: lowest error wins
    (34.0, "ld3-4-l8"),         # fp32 x4 needs 34 ms exactly -> fits at the boundary
    (33.9, "ld3-4-l8-int8"),    # ... and no longer: int8 (18 ms) is the best that fits
    (17.0, "mixed-4"),          # int8 full length needs 18 ms; the mixed-length plan needs 13
    (12.0, "ld3-2-l4"),         # only fp32 1 step (8.5 ms, error .30) and l4 x2 int8 (5 ms, .15) fit
])
def test_choose_exact(budget, expected):
    assert choose(PLANS, budget, at()).candidate.name == expected


def test_budget_below_cheapest_names_minimum():
    with pytest.raises(BudgetError, match=r"^budget 4.9 ms is below the cheapest plan at batch 1: expected >= 5 ms, "
                                          r"the prediction at quantile 0.5 of ld3-2-l4 \(the minimum achievable latency\)$"):
        choose(PLANS, 4.9, at())
    with pytest.raises(BudgetError, match="no candidate plans"):
        choose([], 10.0, at())


def test_batch_scales_prediction():
    # at batch 8 both full-length 4-step plans are over 100 ms (258, 130); mixed lengths need 90
    assert choose(PLANS, 100.0, at(batch=8)).candidate.name == "mixed-4"


def test_pareto_front():
    table = choose(PLANS, 100.0, at()).table
    assert [c.name for c, _ in pareto_front(table)] == ["ld3-2-l4", "mixed-4", "ld3-4-l8-int8", "ld3-4-l8"]


# -- the decoder stage: a per-batch cost, and an axis of the plan ---------------------------------

def decoding(c, kind, error, precision="fp32"):
    return Candidate(f"{c.name}+{kind}", c.schedule, c.solver, c.lengths, c.precision, error, c.fd, kind, precision)


def test_decoder_cost_is_counted_once_per_batch():
    c = decoding(PLANS[1], "taesd", 0.1)                 # 4 calls of 8.5 ms
    assert at().candidate(c) == pytest.approx(34.0 + 10.0)     # not 4 x 10
    assert at(batch=2).candidate(c) == pytest.approx(4 * 16.5 + 20.0)
    assert at().candidate(PLANS[1]) == pytest.approx(34.0)    # latents only
    with pytest.raises(ConfigError, match="profile has no decoder timings; expected one taken with them"):
        at(decoders=False).candidate(c)


# ld3-4-l8 decoded by the SD-VAE is the best image (error .10); with TAESD .20; the 1-step plan .60
DECODED = [decoding(PLANS[1], "sd", 0.10), decoding(PLANS[1], "taesd", 0.20),
           decoding(PLANS[0], "sd", 0.60), decoding(PLANS[0], "taesd", 0.62)]


@pytest.mark.parametrize("budget,expected", [
    (134.0, "ld3-4-l8+sd"),         # 34 ms of sampling + 100 ms of SD-VAE: fits exactly
    (133.9, "ld3-4-l8+taesd"),      # tight: the cheaper decoder (44 ms), the better image that fits
    (43.9, "euler-1-l8+taesd"),     # 8.5 + 10
])
def test_choice_flips_to_the_cheaper_decoder_when_the_budget_is_tight(budget, expected):
    assert choose(DECODED, budget, at()).candidate.name == expected


def test_the_better_decoder_wins_when_it_fits_even_if_slower():
    # TAESD's image error .70 here: the SD-VAE 1-step plan (.60, 108.5 ms) beats it under 133 ms
    worse = [DECODED[0], decoding(PLANS[1], "taesd", 0.70), DECODED[2]]
    assert choose(worse, 133.0, at()).candidate.name == "euler-1-l8+sd"


def test_decoder_share_of_end_to_end_latency():
    choice = choose(DECODED, 133.9, at())
    assert choice.decode_share() == pytest.approx((10.0, 10.0 / 44.0))
    assert choice.decode_share(DECODED[0]) == pytest.approx((100.0, 100.0 / 134.0))
    assert choose(PLANS, 100.0, at()).decode_share() is None          # latents only: no decoder
    with pytest.raises(BudgetError, match=r"expected >= 18.5 ms, the prediction at quantile 0.5 of euler-1-l8\+taesd "
                                          r"\(the minimum achievable latency, 10 ms of it decoding with taesd\)"):
        choose(DECODED, 18.0, at())


def test_decoder_precision_is_part_of_the_prediction():
    half = decoding(PLANS[1], "sd", 0.11, "fp16")
    assert at().candidate(half) == pytest.approx(34.0 + 50.0)
