"""The closed loop's reading of late batches on fake clocks (exact answers): a wait recurs per run
of the sampler's work, quiet jitter within the profile's spread is no wait, one stray wait after a
competitor is forgotten moves nothing (issue 23: what held the deadline controller back)."""

import math

import pytest

from odelt.runtime.budget.planner import Candidate
from odelt.runtime.budget.predict import QuantilePredictor
from odelt.runtime.budget.tracker import Replanner, SpeedTracker
from tests.runtime.fake_clock import FakeClock, FakeHog, FakeTimedBackend, amb_stream, run_batches, synthetic_profile


# the plans of test_deadline.py: 4 Euler steps at l8, l4, l2 (32, 16, 8 ms median on the synthetic profile)
A = Candidate("a-4xl8", "a", "euler", (8, 8, 8, 8), "fp32", error=0.1)
M = Candidate("m-4xl4", "m", "euler", (4, 4, 4, 4), "fp32", error=0.15)
B = Candidate("b-4xl2", "b", "euler", (2, 2, 2, 2), "fp32", error=0.2)


def test_a_wait_recurs_per_run_of_work_so_a_longer_plan_meets_more_of_them():
    """B (8 ms) under a competitor that takes the core for 10 ms after every 12 ms of B's work:
    B waits on two batches of three. One wait per batch would let M in (16 + 10 = 26 <= 30), but
    M's 16 ms cross one or two of the 12 ms runs (36 ms at worst): the tracker measures the run
    (10 ms waited per 12 ms of work) and M is held to 16 + 2 x 10; B (8 + 10) stays."""
    rp = Replanner([A, M, B], QuantilePredictor(synthetic_profile(), 1, 0.95), budget_ms=30.0)
    tr = SpeedTracker()
    for ms in (8.0, 18.0, 18.0, 8.0, 18.0, 18.0):
        tr.observe(ms, 8.0)
    assert tr.cause == "wait" and tr.excess_ms == pytest.approx(10.0) and tr.run_ms == pytest.approx(12.0)
    assert rp.choose(tr.speed, tr.tail, tr.excess_ms, tr.run_ms).candidate == B
    assert rp.by_quality[1].at(tr.speed, tr.tail, tr.excess_ms, tr.run_ms) == pytest.approx(36.0)   # M
    assert rp.choose(tr.speed, tr.tail, tr.excess_ms).candidate == M        # one wait per batch: M, which misses
    assert SpeedTracker().run_ms == math.inf                                  # no competitor seen: no such term


def test_after_the_competitor_a_stray_late_batch_does_not_pull_the_plan_down():
    """The competitor's last slice, then calm: the best plan is back after the third calm batch
    (as before), and one stray late batch two batches later (another process: 20 ms) moves nothing;
    only a second wait within the window would."""
    rp = Replanner([A, M, B], QuantilePredictor(synthetic_profile(), 1, 0.95), budget_ms=40.0)
    tr = SpeedTracker()
    for ms in (8.0, 28.0, 8.0, 28.0, 8.0, 28.0):       # the competitor's slices on B
        tr.observe(ms, 8.0)
    chosen = []
    for ms, predicted in ((8.0, 8.0), (8.0, 8.0), (8.0, 8.0), (32.0, 32.0), (52.0, 32.0), (32.0, 32.0), (32.0, 32.0)):
        tr.observe(ms, predicted)
        chosen.append(rp.choose(tr.speed, tr.tail, tr.excess_ms, tr.run_ms).candidate)
    assert chosen == [M, M, A, A, A, A, A]
    assert not tr.waiting and tr.cause == "none"


def test_quiet_jitter_within_the_profiles_spread_is_no_wait():
    """Batch-64-like timings: A (4 calls at l8: median 32 ms, spread 1.8 ms at q0.95: 33.8) under a
    34 ms budget. Quiet jitter of up to +1.7 ms on most batches and one stall of +2.5 ms: read
    against a fixed 1 ms, three batches 'waited', the tracker took a competitor and held A to its
    largest excess (32 + 2.5 > 34): M. Against the batch's own spread only the stall is late
    (one: a stray), the excess is the second-largest (1.7) and A stays."""
    rp = Replanner([A, M, B], QuantilePredictor(synthetic_profile(), 1, 0.95), budget_ms=34.0)
    script = [32.0, 31.5, 33.2, 31.3, 33.7, 32.0, 30.9, 34.5, 31.8, 32.0]      # median 32 throughout
    spread = rp.by_quality[0].quantile_ms - rp.by_quality[0].median_ms
    assert spread == pytest.approx(1.8)
    jitter, fixed = SpeedTracker(), SpeedTracker()
    for ms in script:
        jitter.observe(ms, 32.0, spread)
        fixed.observe(ms, 32.0)
        assert rp.choose(jitter.speed, jitter.tail, jitter.excess_ms, jitter.run_ms).candidate == A
    assert not jitter.waiting and jitter.excess_ms == pytest.approx(1.7)
    assert fixed.waiting and fixed.excess_ms == pytest.approx(2.5)
    assert rp.choose(fixed.speed, fixed.tail, fixed.excess_ms, fixed.run_ms).candidate == M


def test_a_stream_climbs_back_when_the_competitor_stops_and_a_stray_stall_after_moves_nothing():
    """The time-sliced competitor of _hog_stream (batches 10-24), then one stray 10 ms stall of
    another process on batch 28 (A's 32 ms + 10: that batch misses, whatever the plan was). The
    competitor's last slice hit batch 22; after three calm batches (23-25) the best plan runs from
    batch 26 on, and stays through the stray (one wait re-armed the competitor before: 3 batches of B)."""
    clock = FakeClock()
    hog, stray = FakeHog(run_ms=20.0, slice_ms=25.0), {"ms": 0.0}

    def stall(call, ms):
        extra, stray["ms"] = stray["ms"], 0.0
        return hog(call, ms) + extra
    be = FakeTimedBackend(clock, stall=stall)
    stream = amb_stream(clock, be, 40.0)
    recs = run_batches(stream, hog, 10, 25, at={28: lambda: stray.update(ms=10.0)}).records
    assert [r.index for r in recs if r.missed] == [10, 11, 28]
    assert [r.plan for r in recs[22:26]] == ["b-4xl2"] * 4 and recs[25].replanned_to == "a-4xl8"
    assert [r.plan for r in recs[26:]] == ["a-4xl8"] * 14
    assert recs[28].latency_ms == pytest.approx(42.0) and recs[28].cause == "none"


def test_a_busy_profiles_spread_does_not_hide_a_competitor():
    """A profile taken on a busy machine priced 10 ms of jitter on an 11 ms plan: forgiving it all
    would hide a competitor's 4-9 ms waits. The spread counts up to 10% of the median (1.1 ms):
    two waits of 4 ms are a competitor."""
    tr = SpeedTracker()
    for ms in (11.0, 15.0, 11.0, 15.0):
        tr.observe(ms, 11.0, 10.0)
    assert tr.waiting and tr.cause == "wait" and tr.excess_ms == pytest.approx(4.0)


def _recurring_stream(one_wait_per_batch=False):
    """M (16 ms) and B (8 ms) under 30 ms (A's quantile, 33.8, is over); from batch 5 to 29 a
    competitor takes the core for 10 ms after every 12 ms of the sampler's work. one_wait_per_batch:
    the re-planner ignores the measured run (the rule before)."""
    clock = FakeClock()
    hog = FakeHog(run_ms=12.0, slice_ms=10.0)
    be = FakeTimedBackend(clock, stall=hog)
    stream = amb_stream(clock, be, 30.0, reads=3 if one_wait_per_batch else None)
    return run_batches(stream, hog, 5, 30).records


def test_a_stream_under_a_competitor_that_recurs_within_a_plan_holds_the_plan_that_absorbs_it():
    """M waits once or twice per batch (26 or 36 ms), B once in two of three batches (18 ms). Read
    as one wait per batch, M fitted (16 + 10) whenever the window's waits thinned, and missed (18,
    29); held to 1 + floor(16 / run) = 2 waits it does not fit while the competitor is there, and
    only the competitor's second slice into M at its start (7) misses."""
    recs = _recurring_stream()
    assert [r.index for r in recs if r.missed] == [7]
    assert "".join(r.plan[0] for r in recs) == "m" * 8 + "b" * 24 + "m" * 8
    # 10 batches of B (80 ms of work) waited 7 slices of 10 ms: a run of 80 / 70 x 10 ms
    assert recs[20].cause == "wait" and recs[20].run_ms == pytest.approx(80 / 7)
    before = _recurring_stream(one_wait_per_batch=True)
    assert [r.index for r in before if r.missed] == [7, 18, 29]
