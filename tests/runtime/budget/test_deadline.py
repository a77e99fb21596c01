"""Deadlines on synthetic clocks (a FAKE backend whose call times are scripted): exact answers.

Quantile composition on a synthetic profile, the speed tracker on a scripted slowdown, the
re-planner's choice flip, the anytime switch (a late step shrinks the remaining lengths and the
batch ends by its deadline), no switch when on time, and a whole stream in each control mode.
"""

import dataclasses

import numpy as np
import pytest

from odelt.runtime.budget.anytime import Deadline, LengthProfile
from odelt.ode.heuristics import heuristic_schedule
from odelt.errors import ConfigError
from odelt.runtime.budget.planner import BudgetError, Candidate
from odelt.runtime.budget.predict import QuantilePredictor, call_quantile
from odelt.runtime.sampler import Sampler
from odelt.runtime.budget.stream import Stream
from odelt.runtime.budget.tracker import Planned, Replanner, SpeedTracker
from tests.runtime.fake_clock import (FakeClock, amb_stream, run_batches, FakeDecoder, FakeHog, FakeSegmentBackend, FakeTimedBackend,
                                     decoder_timings, fake_bundle, synthetic_profile)

A = Candidate("a-4xl8", "a", "euler", (8, 8, 8, 8), "fp32", error=0.1)
B = Candidate("b-4xl2", "b", "euler", (2, 2, 2, 2), "fp32", error=0.2)
M = Candidate("m-4xl4", "m", "euler", (4, 4, 4, 4), "fp32", error=0.15)
# a learned per-step-length schedule of a smaller block budget (18 < 32), on the same grid
LEARNED = LengthProfile("b18", (0.0, 0.25, 0.5, 0.75, 1.0), (2, 8, 4, 4))


# -- quantile composition ------------------------------------------------------------------------

def test_quantile_composition_on_a_synthetic_profile():
    at = QuantilePredictor(synthetic_profile(step_ms=0.1, sample_ms=0.5), batch=1, quantile=0.95)
    # medians 4 x 8 + host 4 x 0.1 + 0.5; spread sqrt(4 x 0.9^2) = 1.8
    assert at.median_ms("fp32", A.lengths) == pytest.approx(32.9)
    assert at.candidate(A) == pytest.approx(34.7)
    assert QuantilePredictor(synthetic_profile(), 1, 0.5).candidate(A) == pytest.approx(32.0)   # p50: the old sum
    # a profile without samples: linear in Q between the recorded p90 and p99
    assert call_quantile({"median_ms": 8.0, "p90_ms": 9.0, "p99_ms": 10.0}, 0.95) == pytest.approx(9 + 5 / 9)
    assert call_quantile({"median_ms": 8.0, "p90_ms": 9.0}, 0.99) == pytest.approx(9.0)   # no extrapolation


def test_quantile_composition_against_simulated_plans():
    """Calls with independent jitter: the composed 0.95-quantile of a 4-call plan is within 3% of
    the plan's own (simulated) 0.95-quantile; summing the calls' quantiles would be 9% over."""
    rng = np.random.default_rng(0)
    draw = lambda n, size: n + rng.standard_normal(size) * 0.1 * n          # noqa: E731
    prof = {"calls": {"fp32": {"1": {str(n): {"median_ms": float(n), "samples_ms": list(draw(n, 4000))}
                                     for n in (2, 8)}}}}
    prof["calls"]["fp32"]["1"] = {k: {**v, "median_ms": float(np.median(v["samples_ms"]))}
                                  for k, v in prof["calls"]["fp32"]["1"].items()}
    plans = sum(draw(8, 20000) for _ in range(4))
    measured = float(np.quantile(plans, 0.95))
    composed = QuantilePredictor(prof, 1, 0.95).candidate(A)
    summed = 4 * float(np.quantile(prof["calls"]["fp32"]["1"]["8"]["samples_ms"], 0.95))
    assert abs(composed - measured) / measured < 0.03
    assert (summed - measured) / measured > 0.06


# -- tracker and re-planner ------------------------------------------------------------------------

def test_tracker_follows_a_scripted_slowdown_and_ignores_one_outlier():
    tr = SpeedTracker(window=10)
    script = [1.0] * 4 + [10.0] + [1.0] * 10 + [2.0] * 6 + [1.0] * 10
    seen = [(tr.observe(r, 1.0), tr.tail, tr.excess_ms, tr.cause) for r in script]
    assert seen[:16] == [(1.0, 1.0, 0.0, "none")] * 16      # one batch at 10x moves no estimate
    # two slow batches in a row: either cause (the max of both readings); from the third on every
    # batch since the first slow one is slow: a slowdown, held to the ratio alone (no excess)
    assert [c for *_, c in seen[15:23]] == ["none", "both"] + ["slowdown"] * 4 + ["wait"] * 2
    assert [t for _, t, _, _ in seen[15:21]] == [1.0] + [2.0] * 5
    assert [e for _, _, e, _ in seen[15:21]] == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert [s for s, *_ in seen[15:21]] == [1.0] * 4 + [1.5, 2.0]          # the median
    # it ends: untouched batches after slow ones read as a wait (the untouched ratio, the largest
    # excess) until three in a row ran untouched: the window forgets, everything is back at 1
    assert [(s, t, e) for s, t, e, _ in seen[21:23]] == [(1.0, 1.0, 1.0)] * 2
    assert seen[23:] == [(1.0, 1.0, 0.0, "none")] * 8
    fresh = SpeedTracker(window=10)
    assert [(fresh.observe(3.0, 1.0), fresh.tail) for _ in range(3)] == [(1.0, 1.0), (1.0, 3.0), (3.0, 3.0)]


def test_tracker_tells_a_wait_from_a_slowdown():
    """A 4.5 ms plan that waits 4 ms on two batches in a row: either cause, both readings hold
    (a 0.9 ms plan at max(1.89 x 0.9, 0.9 + 4) = 4.9 ms). Untouched batches between waits: a
    competitor's slices, the wait alone (0.9 + 4). Every batch slow for three: the ratio alone."""
    cheap = Planned(B, 0.9, 1.0)
    tr = SpeedTracker()
    for ms in (4.5, 8.5, 8.5):
        tr.observe(ms, 4.5)
    assert tr.cause == "both" and tr.tail == pytest.approx(8.5 / 4.5) and tr.excess_ms == pytest.approx(4.0)
    assert cheap.at(tr.speed, tr.tail, tr.excess_ms) == pytest.approx(4.9)
    tr.observe(4.5, 4.5)                                    # untouched: the waits are time slices
    assert tr.cause == "wait" and tr.tail == 1.0 and tr.excess_ms == pytest.approx(4.0)
    assert cheap.at(tr.speed, tr.tail, tr.excess_ms) == pytest.approx(4.9)
    slow = SpeedTracker()
    for _ in range(3):
        slow.observe(9.0, 4.5)                              # every batch 2x: a slowdown
    assert slow.cause == "slowdown" and slow.excess_ms == 0.0
    assert cheap.at(slow.speed, slow.tail, slow.excess_ms) == pytest.approx(2.0)   # 2 x 1.0 at the quantile


def test_tracker_forgets_a_competitor_after_three_calm_batches_and_one_wait_is_a_stray():
    """A competitor stalls the sampler 4 ms after every 8.25 ms of its work: a 0.75 ms plan waits
    on every 11th batch (waits at 10, 21, 32, 43). The second wait (21) is a competitor; three
    calm batches later (24) it is forgotten. One wait after that (32) is a stray, as any one wait
    is: nothing moves; the next within the window (43: 14 batches hold the 10 ms horizon) makes
    two, the competitor again. After the last wait it is forgotten at 46: three batches."""
    def excess(horizon):
        tr = SpeedTracker(window=10, horizon_ms=horizon)
        out = []
        for i in range(60):
            wait = 4.0 if i % 11 == 10 and i < 45 else 0.0
            tr.observe(0.75 + wait, 0.75)
            out.append(tr.excess_ms)
        return out
    assert excess(0.0) == [0.0] * 60
    assert excess(10.0) == [0.0] * 21 + [4.0] * 3 + [0.0] * 19 + [4.0] * 3 + [0.0] * 14


def test_tracker_waiting_reads_the_largest_wait():
    """Waits of 4.1 and 5.0 ms: waiting, the excess is the larger (the next may be as long)."""
    tr = SpeedTracker()
    for wait in (0.0, 4.1, 0.0, 5.0, 0.0):
        tr.observe(1.0 + wait, 1.0)
    assert tr.waiting and tr.excess_ms == pytest.approx(5.0)


def test_a_recurring_competitor_holds_the_tail_at_the_largest_ratio():
    """Long batches under a competitor: each batch is a slowdown of varying size (1.8-2.35x on the
    digits model's batches of 128). One batch of ten at 2.4x: the second-largest ratio (2.0) would
    let M through at 2.0 x 17.8 = 35.6 ms under a 36 ms budget, and M's next 2.4x batch takes
    38.4 ms; the competitor recurs (every batch waits >= 1 ms), so the tail is the largest: B."""
    rp = Replanner([A, M, B], QuantilePredictor(synthetic_profile(), 1, 0.95), budget_ms=36.0)
    tr = SpeedTracker(window=10)
    for ratio in [2.0] * 9 + [2.4]:
        tr.observe(8.0 * ratio, 8.0)
    assert tr.waiting and (tr.speed, tr.tail) == (2.0, 2.4) and tr.cause == "slowdown" and tr.excess_ms == 0.0
    assert rp.choose(tr.speed, tr.tail, tr.excess_ms).candidate == B
    assert rp.choose(tr.speed, 2.0, tr.excess_ms).candidate == M              # the second-largest's choice
    # jitter under wait_ms is no competitor: one bad batch of ten still moves nothing
    quiet = SpeedTracker(window=10)
    for ratio in [1.0] * 8 + [1.05, 1.1]:
        quiet.observe(8.0 * ratio, 8.0)
    assert not quiet.waiting and quiet.tail == pytest.approx(1.05) and quiet.excess_ms == pytest.approx(0.4)


def test_replanner_flips_with_speed_and_back():
    rp = Replanner([B, A], QuantilePredictor(synthetic_profile(), 1, 0.95), budget_ms=40.0)
    # A needs 33.8 ms at the quantile, B 9.8 ms
    assert rp.choose(1.0).candidate == A
    assert rp.choose(40 / 33.8).candidate == A           # exactly at the budget still fits
    assert rp.choose(1.2).candidate == B                 # 40.56 ms > 40
    assert rp.choose(1.0).candidate == A                 # faster again: the better plan fits again
    assert rp.choose(10.0).candidate == B                # nothing fits: the cheapest
    assert rp.choose(1.0, tail=1.25).candidate == A      # observed tail x A's median 32 ms = 40 ms
    assert rp.choose(1.0, tail=1.3).candidate == B       # 41.6 ms: bad batches of A would miss
    assert rp.choose(1.0, 1.0, excess_ms=8.0).candidate == A    # A's median 32 ms + a wait of 8 ms
    assert rp.choose(1.0, 1.0, excess_ms=8.5).candidate == B    # 40.5 ms: A's batches that wait would miss
    assert rp.by_quality[0].at(1.1, 1.2, 2.0) == pytest.approx(max(33.8 * 1.1, 32 * 1.2, 32 + 2))
    assert rp.by_quality[0].at(0.9, 0.95, 2.0) == pytest.approx(max(33.8 * 0.9, 32 * 0.95, 32 * 0.9 + 2))
    # the one chooser's refusal (planner.choose), word for word
    with pytest.raises(BudgetError, match=r"^budget 9 ms is below the cheapest plan at batch 1: expected >= 9.8 ms, "
                                          r"the prediction at quantile 0.95 of b-4xl2 \(the minimum achievable latency\)$"):
        Replanner([A, B], QuantilePredictor(synthetic_profile(), 1, 0.95), budget_ms=9.0).first()


def test_a_wait_is_absorbed_where_it_fits_not_scaled_as_a_ratio():
    """A (32 ms) waited 25 ms: 57 ms. As a ratio alone (1.78x) that predicts M at 28.5 ms, which
    fits, and M then takes 16 + 25 = 41 ms; read also as a 25 ms wait, M needs 41 > 40 and B
    (8 + 25) fits."""
    rp = Replanner([A, M, B], QuantilePredictor(synthetic_profile(), 1, 0.95), budget_ms=40.0)
    tr = SpeedTracker()
    for ms in (32.0, 32.0, 32.0, 57.0, 57.0):
        tr.observe(ms, 32.0)
    assert (tr.speed, tr.tail, tr.excess_ms) == (1.0, 57 / 32, 25.0)
    assert rp.choose(tr.speed, tr.tail, tr.excess_ms).candidate == B
    assert rp.choose(tr.speed, tr.tail).candidate == M               # the ratio's choice


# -- anytime inside a batch ------------------------------------------------------------------------

def _run(factor, budget=40.0, profiles=(LEARNED,), control=True, finish=True):
    clock = FakeClock()
    be = FakeTimedBackend(clock, factor=factor)
    sched = heuristic_schedule("uniform", "euler", 4, 8)
    sampler = Sampler(be, fake_bundle(), sched, clock=clock)
    ctrl = Deadline(sched, "fp32", QuantilePredictor(synthetic_profile(), 1, 0.95), budget, (2, 4, 8), profiles,
                    finish=finish)
    x0 = np.random.default_rng(0).standard_normal((1, 1, 4, 4)).astype(np.float32)
    x, st = sampler.sample(x0, np.zeros(1, np.int32), ctrl if control else None)
    return x, st, be, ctrl


def test_timeline_spreads_the_slack():
    _, _, _, ctrl = _run(lambda call: 1.0)
    assert ctrl.timeline == pytest.approx([10.0, 20.0, 30.0, 40.0])


def test_late_step_switches_to_the_learned_lengths_and_ends_by_the_deadline():
    # call 0 takes 12 ms (> 10 on the timeline): speed 1.5, 28 ms left. Predicted at 1.5x the
    # quantile: current (8,8,8) 38.3 ms; learned b18 mapped at t=.25,.5,.75 -> (8,4,4) 26.3 ms,
    # 16 blocks; cap 4 -> (4,4,4) 20.3 ms, 12 blocks. The learned option fits with the most blocks.
    _, st, be, _ = _run(lambda call: 1.5 if call == 0 else 1.0)
    assert be.calls == [8, 8, 4, 4] and st.lengths == (8, 8, 4, 4)
    (sw,) = st.switches
    assert (sw.step, sw.before, sw.after, sw.source) == (1, (8, 8, 8), (8, 4, 4), "learned:b18")
    assert sw.elapsed_ms == pytest.approx(12.0) and sw.planned_ms == pytest.approx(10.0)
    assert st.wall_s * 1e3 == pytest.approx(28.0) and st.wall_s * 1e3 <= 40.0


def test_a_batch_slow_throughout_still_ends_by_the_deadline():
    # every call 1.6x: at step 0 (12.8 ms) learned (8,4,4) needs 28.1 > 27.2 ms; cap 4 fits
    _, st, be, _ = _run(lambda call: 1.6)
    assert be.calls == [8, 4, 4, 4]
    assert [s.source for s in st.switches] == ["cap:4"]
    assert st.wall_s * 1e3 == pytest.approx(32.0) and st.wall_s * 1e3 <= 40.0
    # without control the same batch runs 51.2 ms: a miss
    _, st_open, _, _ = _run(lambda call: 1.6, control=False)
    assert st_open.wall_s * 1e3 == pytest.approx(51.2)


def test_nothing_fits_takes_the_shortest_lengths():
    # call 0 takes 24 ms: speed 3, 16 ms left; even (2,2,2) needs 22.7 ms at 3x -> the cheapest
    # (early finishes off; with them the steps merge: tests/runtime/budget/test_finish.py)
    _, st, be, _ = _run(lambda call: 3.0 if call == 0 else 1.0, finish=False)
    assert be.calls == [8, 2, 2, 2] and st.switches[0].source == "cap:2"
    assert st.wall_s * 1e3 == pytest.approx(30.0)


def test_no_switch_when_on_time_and_images_are_the_plans():
    x, st, be, _ = _run(lambda call: 1.2)               # 9.6, 19.2, 28.8 ms: on the timeline
    x_plain, st_plain, _, _ = _run(lambda call: 1.2, control=False)
    assert st.switches == () and be.calls == [8] * 4 and st.lengths == (8,) * 4
    np.testing.assert_array_equal(x, x_plain)           # bit-identical: reproducible for a fixed seed


def test_early_never_lengthens_and_the_next_batch_runs_the_plan_again():
    clock = FakeClock()
    script = iter([1.5, 0.1, 0.1, 0.1] + [1.0] * 4)     # late, then far ahead of the timeline
    be = FakeTimedBackend(clock, factor=lambda call: next(script))
    sched = heuristic_schedule("uniform", "euler", 4, 8)
    sampler = Sampler(be, fake_bundle(), sched, clock=clock)
    ctrl = Deadline(sched, "fp32", QuantilePredictor(synthetic_profile(), 1, 0.95), 40.0, (2, 4, 8), (LEARNED,))
    x0 = np.zeros((1, 1, 4, 4), np.float32)
    _, st = sampler.sample(x0, np.zeros(1, np.int32), ctrl)
    assert st.lengths == (8, 8, 4, 4)
    _, st2 = sampler.sample(x0, np.zeros(1, np.int32), ctrl)
    assert st2.lengths == (8,) * 4 and st2.switches == ()


# -- a stream of batches ---------------------------------------------------------------------------

def _stream(control):
    clock = FakeClock()
    be = FakeTimedBackend(clock)
    schedules = {"a": heuristic_schedule("uniform", "euler", 4, 8), "b": heuristic_schedule("uniform", "euler", 4, 2)}
    rp = Replanner([A, B], QuantilePredictor(synthetic_profile(), 1, 0.95), budget_ms=40.0)
    stream = Stream(rp, lambda c: Sampler(be, fake_bundle(), schedules[c.schedule], clock=clock), control,
                    exported=(2, 4, 8), clock=clock)
    x0, y = np.zeros((1, 1, 4, 4), np.float32), np.zeros(1, np.int32)
    for i in range(30):
        be.slow = 2.0 if 10 <= i < 20 else 1.0          # the device runs at half speed for 10 batches
        stream.run(x0, y)
    return stream.stats


def test_stream_open_closed_anytime_on_a_scripted_slowdown():
    open_, closed, anytime = (_stream(c) for c in ("open", "closed", "anytime"))
    assert [r.index for r in open_.records if r.missed] == list(range(10, 20))
    assert open_.replans == 0
    # closed loop: the tail follows at the second slow batch (B from batch 12 on); A again three
    # calm batches after the slowdown ends (20, 21, 22: A from batch 23 on)
    assert [r.index for r in closed.records if r.missed] == [10, 11]
    assert [(r.index, r.replanned_to) for r in closed.records if r.replanned_to] == [(11, "b-4xl2"), (22, "a-4xl8")]
    # anytime: the slow A batches shorten their last steps (8,2,2,2 = 28 ms at 2x) and none misses
    assert anytime.misses == 0
    assert [r.lengths for r in anytime.records[10:12]] == [(8, 2, 2, 2)] * 2
    assert anytime.switches == 2 and [r.plan for r in anytime.records[12:30]] == ["b-4xl2"] * 11 + ["a-4xl8"] * 7
    assert anytime.records[11].tail == pytest.approx(2.0)    # ratio to the lengths really run
    # re-planning is timed on the stream's clock: the fake one does not move while it plans
    assert all(r.replan_us == 0 for r in anytime.records)
    assert "0/30 batches missed the budget, 2 re-plans, 2 length switches" in anytime.summary()


def test_quantile_composition_counts_the_decoder_once_per_batch():
    prof = synthetic_profile(step_ms=0.1, sample_ms=0.5)
    # decoding a batch: 21 samples over [9, 11] ms -> median 10, 0.95-quantile 10.9
    prof["decoders"] = decoder_timings(taesd=10.0)
    at = QuantilePredictor(prof, 1, 0.95)
    decoded = Candidate("a+taesd", "a", "euler", A.lengths, "fp32", 0.1, decoder="taesd")
    assert at.median(decoded) == pytest.approx(32.9 + 10.0)
    # the decode's excess is one more independent term: sqrt(4 x 0.9^2 + 0.9^2)
    assert at.candidate(decoded) == pytest.approx(42.9 + 0.9 * np.sqrt(5))
    assert at.candidate(A) == pytest.approx(34.7)                                # latents only: unchanged
    rp = Replanner([decoded], at, budget_ms=100.0)
    assert rp.first().median_ms == pytest.approx(42.9)                          # end to end
    with pytest.raises(ConfigError, match="profile has no decoder timings for sd at fp32"):
        at.candidate(Candidate("a+sd", "a", "euler", A.lengths, "fp32", 0.1, decoder="sd"))


# -- a stream of decoded batches: the decoder inside the budget ------------------------------------
A_SD = Candidate("a-4xl8+sd", "a", "euler", (8, 8, 8, 8), "fp32", error=0.1, decoder="sd")
A_TAESD = Candidate("a-4xl8+taesd", "a", "euler", (8, 8, 8, 8), "fp32", error=0.2, decoder="taesd")
B_TAESD = Candidate("b-4xl2+taesd", "b", "euler", (2, 2, 2, 2), "fp32", error=0.3, decoder="taesd")


def _decoding_stream(control, budget, factor=lambda call: 1.0):
    clock = FakeClock()
    be = FakeTimedBackend(clock, factor=factor)
    prof = {**synthetic_profile(), "decoders": decoder_timings(sd=30.0, taesd=10.0)}
    decoders = {"sd": FakeDecoder(clock, 30.0), "taesd": FakeDecoder(clock, 10.0)}
    schedules = {"a": heuristic_schedule("uniform", "euler", 4, 8), "b": heuristic_schedule("uniform", "euler", 4, 2)}
    rp = Replanner([A_SD, A_TAESD, B_TAESD], QuantilePredictor(prof, 1, 0.95), budget_ms=budget)
    stream = Stream(rp, lambda c: Sampler(be, fake_bundle(), schedules[c.schedule], clock=clock), control,
                    exported=(2, 4, 8), clock=clock, decoder=lambda c: decoders[c.decoder])
    return stream, decoders


def test_a_decoded_batch_counts_its_decode_in_the_budget_and_the_tracker():
    # A+sd needs 62 ms (median) + 2.01 at the 0.95 quantile > 50: A+taesd (44.01) is the plan
    stream, decoders = _decoding_stream("closed", 50.0)
    assert stream.current.candidate == A_TAESD and stream.current.median_ms == pytest.approx(42.0)
    x0, y = np.zeros((1, 1, 4, 4), np.float32), np.zeros(1, np.int32)
    for _ in range(3):
        samples, _ = stream.run(x0, y)
    assert samples.shape == (1, 1, 4, 4) and [im.shape for im in stream.images] == [(1, 1, 8, 8)] * 3
    assert decoders["taesd"].batches == [1, 1, 1] and decoders["sd"].batches == []
    assert [r.latency_ms for r in stream.stats.records] == pytest.approx([42.0] * 3)    # 4 x 8 + 10
    assert stream.decode_s == pytest.approx(0.030)
    assert stream.tracker.speed == pytest.approx(1.0)      # as profiled: the decode is in the prediction
    decoders["taesd"].slow = 3.0                           # the decoder slows: 32 + 30 ms, a miss
    for _ in range(3):
        stream.run(x0, y)
    assert stream.stats.records[3].missed and stream.current.candidate == B_TAESD


def test_anytime_reserves_the_decode_after_the_last_step():
    # A+sd at 70 ms: the steps get (70 - 30) ms; every call 1.6x slow: late at step 0 (12.8 > 10),
    # no option for the 3 steps left fits with the decode reserved (cap 2 at 1.6x: 59.0 > 57.2 ms
    # left), so they merge into 2 steps at length 2 (56.1 ms): 12.8 + 2 x 3.2 + 30 = 49.2 ms
    # (without early finishes: the cheapest, cap 2, 52.4 ms).
    # (With no reserve the timeline would be 17.5, 35, 52.5: never late, and 51.2 + 30 = 81.2 ms.)
    stream, decoders = _decoding_stream("anytime", 70.0, factor=lambda call: 1.6)
    assert stream.current.candidate == A_SD
    assert stream.deadline(A_SD).timeline == pytest.approx([10.0, 20.0, 30.0, 40.0])
    stream.run(np.zeros((1, 1, 4, 4), np.float32), np.zeros(1, np.int32))
    (r,) = stream.stats.records
    assert r.lengths == (8, 2, 2) and r.switches == ()
    assert [(f.step, f.starts, f.dropped) for f in r.finishes] == [(0, (1, 2), 1)]
    assert r.latency_ms == pytest.approx(49.2) and not r.missed


def _hog_stream(control, tail_only=False):
    """A (32 ms), M (16) and B (8) under a 40 ms budget; from batch 10 to 24 a competitor takes
    the core for 25 ms after every 20 ms of the sampler's work. B + 25 fits, M + 25 does not.
    tail_only: the re-planner reads bad batches as ratios only (before waits were modelled)."""
    clock = FakeClock()
    hog = FakeHog(run_ms=20.0, slice_ms=25.0)
    be = FakeTimedBackend(clock, stall=hog)
    return run_batches(amb_stream(clock, be, 40.0, control, reads=2 if tail_only else None), hog, 10, 25)


def test_stream_under_a_time_sliced_competitor():
    closed = _hog_stream("closed")
    # A waits once or twice per batch; at the second wait the tracked excess is 25 ms and the
    # stream goes straight to B, which waits on 2 batches of 5 and still ends in 33 ms
    assert [r.index for r in closed.records if r.missed] == [10, 11]
    assert [(r.index, r.replanned_to) for r in closed.records if r.replanned_to] == [(11, "b-4xl2"), (25, "a-4xl8")]
    assert [r.excess_ms for r in closed.records[10:15]] == pytest.approx([25.0, 50.0, 25.0, 0.0, 0.0], abs=1e-9)
    assert max(r.latency_ms for r in closed.records[12:]) == pytest.approx(33.0)
    # under the competitor B waits every 2-3 batches (the best plan whose own time + the wait
    # fits); A again after three calm batches (its last wait was batch 22; 23, 24, 25 ran
    # untouched; it stopped at batch 25): the first batch after it runs A
    assert [r.tail_excess_ms for r in closed.records[22:26]] == pytest.approx([25.0, 25.0, 25.0, 0.0], abs=1e-9)
    assert [r.cause for r in closed.records[13:25]] == ["wait"] * 12
    anytime = _hog_stream("anytime")
    assert [r.index for r in anytime.records if r.missed] == [10, 11]       # 25 ms waits: too late to save
    # past the budget before their last steps, they finish early (the least lateness): 49 and 41 ms
    assert [r.lengths for r in anytime.records if r.finishes] == [(8, 8, 8), (8, 8)]
    assert [r.latency_ms for r in anytime.records[10:12]] == pytest.approx([49.0, 41.0])
    # read as ratios only: once the waits are known as a competitor's (B's untouched batches in
    # between), the ratio is the untouched batches' (1) and A looks as fast as profiled: back to
    # A, which waits and misses on every batch. The wait is what keeps B.
    ratio = _hog_stream("closed", tail_only=True)
    assert [r.tail for r in ratio.records[10:13]] == pytest.approx([1.0, 82 / 32, 4.125])
    assert [(r.index, r.replanned_to) for r in ratio.records if r.replanned_to][:2] == [(11, "b-4xl2"), (13, "a-4xl8")]
    assert [r.index for r in ratio.records if r.missed] == [10, 11] + list(range(14, 23)) + [24]


# -- decision points inside a step (segments layout) -----------------------------------------------

def _segment_run(stall, budget, control=True, steps=2, length=8):
    """A plan of `steps` Euler steps at `length` on the FAKE segments backend (2 ms per chunk of
    two blocks), exits at 2, 4, 6; stall(call, chunk ms) -> ms waited for the core in that chunk."""
    clock = FakeClock()
    be = FakeSegmentBackend(clock, stall=stall)
    sched = heuristic_schedule("uniform", "euler", steps, length)
    sampler = Sampler(be, fake_bundle(), sched, clock=clock)
    prof = synthetic_profile((2, 4, 6, 8), exits=True)
    ctrl = Deadline(sched, "fp32", QuantilePredictor(prof, 1, 0.95), budget, (2, 4, 6, 8), (), exits=sampler.exits)
    x0 = np.random.default_rng(0).standard_normal((2, 1, 4, 4)).astype(np.float32)
    x, st = sampler.sample(x0, np.zeros(2, np.int32), ctrl if control else None)
    return x, st, be, ctrl


def test_segment_timeline_is_planned_from_the_profiles_exit_times():
    # 2 steps at 8: 16 ms of median work over an 18 ms budget: x1.125; exits at 2, 4, 6 ms into a call
    _, _, _, ctrl = _segment_run(lambda call, ms: 0.0, 18.0)
    assert ctrl.timeline == pytest.approx([9.0, 18.0])
    assert {k: v[0] for k, v in ctrl.points.items()} == pytest.approx(
        {(0, 2): 2.25, (0, 4): 4.5, (0, 6): 6.75, (1, 2): 11.25, (1, 4): 13.5, (1, 6): 15.75})


def test_a_late_segment_exits_at_the_next_head_and_the_rest_shrinks():
    # the first chunk waits 3 ms (a competitor's slice): at exit 2 the batch is at 5 ms against
    # 2.25 planned, speed 5 / 2 = 2.5, 13 ms left. Going on costs 2.5 x 6 ms for this call alone
    # (15 > 13); stopping here (the head: no time on the fake) leaves room for step 1 at 4 (2.5 x
    # 4.9 = 12.25 ms), not at 6 (17.25): stop at 2, then 4. Both rows of the batch stop together.
    x, st, be, ctrl = _segment_run(stall_once(3.0), 18.0)
    assert be.calls == [8, 4] and be.ran == [2, 4] and st.lengths == (2, 4)
    (ex,) = st.exits
    assert (ex.step, ex.length, ex.exit) == (0, 8, 2)
    assert ex.elapsed_ms == pytest.approx(5.0) and ex.planned_ms == pytest.approx(2.25)
    (sw,) = st.switches
    assert (sw.step, sw.before, sw.after) == (1, (8,), (4,))
    assert st.wall_s * 1e3 == pytest.approx(9.0) and st.wall_s * 1e3 <= 18.0
    # without control the same batch runs 19 ms: a miss
    _, st_open, be_open, _ = _segment_run(stall_once(3.0), 18.0, control=False)
    assert st_open.wall_s * 1e3 == pytest.approx(19.0) and be_open.ran == [8, 8]


def stall_once(ms_wait):
    state = {"done": False}

    def stall(call, ms):
        if not state["done"]:
            state["done"] = True
            return ms_wait
        return 0.0
    return stall


def test_an_exit_is_the_head_on_the_sum_so_far_not_a_call_at_the_exit():
    # the exit keeps the blocks already run (modulated for length 8): the velocity of step 0
    # differs from a plan that ran step 0 at length 2 (what a per-length layout could do instead)
    x, st, _, _ = _segment_run(stall_once(3.0), 18.0)
    clock = FakeClock()
    be = FakeSegmentBackend(clock)
    sched = dataclasses.replace(heuristic_schedule("uniform", "euler", 2, 8), lengths=(2, 4))
    x_short, _ = Sampler(be, fake_bundle(), sched, clock=clock).sample(
        np.random.default_rng(0).standard_normal((2, 1, 4, 4)).astype(np.float32), np.zeros(2, np.int32))
    assert st.lengths == (2, 4) and not np.array_equal(x, x_short)


def test_on_time_no_exit_and_the_images_are_bit_identical():
    x, st, be, _ = _segment_run(lambda call, ms: 0.0, 18.0)
    x_plain, st_plain, be_plain, _ = _segment_run(lambda call, ms: 0.0, 18.0, control=False)
    assert st.exits == () and st.switches == () and be.ran == be_plain.ran == [8, 8]
    np.testing.assert_array_equal(x, x_plain)
    assert x.tobytes() == x_plain.tobytes()


def test_heun_steps_decide_between_steps_only():
    clock = FakeClock()
    be = FakeSegmentBackend(clock)
    sampler = Sampler(be, fake_bundle(), heuristic_schedule("uniform", "heun", 2, 8), clock=clock)
    assert set(sampler.exits.values()) == {()}
    assert Sampler(be, fake_bundle(), heuristic_schedule("uniform", "euler", 2, 8), clock=clock).exits[8] == (2, 4, 6)


# -- the controller: the best plan under the cause -------------------------------------------------

def test_the_controller_keeps_the_best_plan_the_cause_allows():
    """B (8 ms) runs; the budget is 40 ms. A competitor's 20 ms slices on every other batch: read
    as a ratio (28 / 8 = 3.5x) nothing but B fits; read as a wait M (16 + 20 = 36 ms) fits and is
    the choice. A slowdown of 2.0x on every batch: M fits (2 x 17.8 = 35.6 ms); of 2.3x it does
    not (40.9 ms): B."""
    rp = Replanner([A, M, B], QuantilePredictor(synthetic_profile(), 1, 0.95), budget_ms=40.0)
    wait = SpeedTracker()
    for ms in (8.0, 28.0, 8.0, 28.0, 8.0):
        wait.observe(ms, 8.0)
    assert wait.cause == "wait" and wait.excess_ms == pytest.approx(20.0) and wait.tail == 1.0
    assert rp.choose(wait.speed, wait.tail, wait.excess_ms).candidate == M
    assert rp.choose(wait.speed, 3.5, wait.excess_ms).candidate == B          # the ratio's reading
    for ratio, plan in ((2.0, M), (2.3, B)):
        slow = SpeedTracker()
        for _ in range(4):
            slow.observe(8.0 * ratio, 8.0)
        assert slow.cause == "slowdown" and slow.excess_ms == 0.0
        assert rp.choose(slow.speed, slow.tail, slow.excess_ms).candidate == plan


def test_the_controller_climbs_back_within_three_batches_of_the_competitor_stopping():
    rp = Replanner([A, M, B], QuantilePredictor(synthetic_profile(), 1, 0.95), budget_ms=40.0)
    tr = SpeedTracker()
    for ms in (8.0, 28.0, 8.0, 28.0, 8.0, 28.0):       # the competitor's last slice
        tr.observe(ms, 8.0)
    chosen = []
    for _ in range(4):                                  # it has stopped
        tr.observe(8.0, 8.0)
        chosen.append(rp.choose(tr.speed, tr.tail, tr.excess_ms).candidate)
    assert chosen == [M, M, A, A]                       # after the third calm batch: the best plan


A2 = Candidate("a-2xl8", "a2", "euler", (8, 8), "fp32", error=0.1)
B2 = Candidate("b-2xl2", "b2", "euler", (2, 2), "fp32", error=0.2)


def _onset_stream(backend_class, budget=17.5, finish=True):
    """Two-step plans (A2: 16 ms, B2: 4 ms) under 17.5 ms; from batch 5 a competitor takes the core
    for 8 ms after every 6 ms of the sampler's work: the onset batch waits inside its first step."""
    clock = FakeClock()
    hog = FakeHog(run_ms=6.0, slice_ms=8.0)
    be = backend_class(clock, lengths=(2, 4, 6, 8), stall=hog)
    schedules = {c.schedule: heuristic_schedule("uniform", "euler", 2, c.lengths[0]) for c in (A2, B2)}
    prof = synthetic_profile((2, 4, 6, 8), exits=True)
    rp = Replanner([A2, B2], QuantilePredictor(prof, 1, 0.95), budget_ms=budget)
    stream = Stream(rp, lambda c: Sampler(be, fake_bundle(), schedules[c.schedule], clock=clock), "anytime",
                    exported=(2, 4, 6, 8), clock=clock, finish=finish)
    x0, y = np.zeros((1, 1, 4, 4), np.float32), np.zeros(1, np.int32)
    for i in range(8):
        if i == 5:
            hog.start()
        stream.run(x0, y)
    return stream.stats


def test_the_onset_batch_is_held_by_an_exit_inside_its_first_step():
    # segments: 6 ms of work reach exit 6, then the 8 ms slice: 14 ms against 6.6 planned. Going
    # on or a second step is predicted over the 3.5 ms left at the batch's speed (14 / 6): stop at
    # 6 and finish there (x + (1 - t) v): 14 ms (without early finishes: step 1 at 2, 16 ms).
    # Between steps only (per-length): step 0 ends at 16 ms, step 1 at 2: 18 > 17.5.
    seg = _onset_stream(FakeSegmentBackend)
    onset = seg.records[5]
    assert not onset.missed and onset.latency_ms == pytest.approx(14.0) and onset.lengths == (6,)
    assert [(f.step, f.inside, f.dropped) for f in onset.finishes] == [(0, True, 1)]
    assert onset.to_json()["finishes"] == [{"step": 0, "elapsed_ms": 14.0, "planned_ms": 6.5625, "inside": True,
                                            "dropped": 1, "starts": [], "length": 2}]
    assert [(e.step, e.length, e.exit) for e in onset.exits] == [(0, 8, 6)]
    assert onset.to_json()["exits"] == [{"step": 0, "elapsed_ms": 14.0, "planned_ms": 6.5625, "length": 8, "exit": 6}]
    # the next batch waits too (one wait is no pattern yet: still A2) and finishes at 6 again; then
    # B2, whose 4 ms + the 8 ms slice fit (an expected wait: no step dropped): nothing missed
    assert seg.misses == 0 and [r.plan for r in seg.records[5:]] == ["a-2xl8"] * 2 + ["b-2xl2"]
    assert seg.records[7].lengths == (2, 2) and seg.records[7].finishes == ()
    assert ("0/8 batches missed the budget, 1 re-plans, 0 length switches, 2 exits inside a step, 2 early finishes"
            in seg.summary())
    assert "exits inside a step: batch 5 step 0 at exit 6 of 8, batch 6 step 0 at exit 6 of 8" in seg.summary()
    assert "early finishes: batch 5 step 0: finished (1 step dropped), batch 6 step 0" in seg.summary()
    # between steps only (per-length): without early finishes step 1 at 2 ends at 18 > 17.5 ms;
    # with them the batch finishes after step 0, at 16 ms (tests/runtime/budget/test_finish.py)
    old = _onset_stream(FakeTimedBackend, finish=False)
    assert old.records[5].missed and old.records[5].latency_ms == pytest.approx(18.0) and old.exits == 0
    per_length = _onset_stream(FakeTimedBackend)
    assert not per_length.records[5].missed and per_length.records[5].latency_ms == pytest.approx(16.0)
    assert per_length.exits == 0 and [len(r.finishes) for r in per_length.records[5:]] == [1, 1, 0]
    assert (old.misses, per_length.misses) == (2, 0)            # batch 6 waits too: 26 ms before, 16 now

