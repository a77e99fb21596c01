"""Exits inside a call on the real ONNX Runtime backend (the tiny model, segments layout): a call
asked at every exit and told to go on is the plain call, bit for bit; stopped at an exit it is the
exit head on the velocity sum of the blocks run so far, the same as the graph-by-graph chain
runner stopped there, and not a call at the exit's length (the blocks kept the call's length
embedding)."""

import numpy as np
import pytest

from odelt.bundle.chain import chain_exits
from odelt.runtime.backends import open_backend
from odelt.runtime.budget.profile import step_feeds


def test_chain_exits_of_the_segments_and_per_length_layouts(tiny_bundle):
    assert chain_exits(tiny_bundle, 4, "segments") == {1: 2}      # after blocks_0-1: length 2
    assert chain_exits(tiny_bundle, 2, "segments") == {}
    assert chain_exits(tiny_bundle, 4, "per-length") == {}


@pytest.mark.parametrize("naive", [False, True])
def test_a_call_stopped_at_an_exit(tiny_bundle, naive):
    feeds = step_feeds(tiny_bundle, 4, 3)
    with open_backend("ort", tiny_bundle, layout="segments", threads=1, naive=naive) as be:
        assert be.exits(4) == (2,) and be.exits(2) == ()
        plain = np.array(be.infer(feeds)["velocity"])
        asked: list[int] = []
        going_on = np.array(be.infer(feeds, lambda e: asked.append(e) or False)["velocity"])
        stopped = np.array(be.infer(feeds, lambda e: True)["velocity"])
        at_two = np.array(be.infer({**feeds, "l": np.full(3, 2, np.int32)})["velocity"])
    assert asked == [2]
    assert going_on.tobytes() == plain.tobytes()
    assert not np.allclose(stopped, plain, atol=1e-4) and not np.allclose(stopped, at_two, atol=1e-4)


def test_the_bound_and_the_naive_runner_stop_alike(tiny_bundle):
    feeds = step_feeds(tiny_bundle, 4, 3)
    out = {}
    for naive in (False, True):
        with open_backend("ort", tiny_bundle, layout="segments", threads=1, naive=naive) as be:
            out[naive] = np.array(be.infer(feeds, lambda e: True)["velocity"])
    np.testing.assert_allclose(out[False], out[True], rtol=1e-5, atol=1e-6)


def test_the_profile_times_the_exits_inside_calls(tiny_bundle):
    from odelt.runtime.budget.predict import QuantilePredictor
    from odelt.runtime.budget.profile import profile_bundle

    prof = profile_bundle(tiny_bundle, batches=(2,), repeats=5, time_graphs=False, decoder_repeats=None)
    calls = prof["calls"]["fp32"]["2"]
    assert set(calls["4"]["exits_ms"]) == {"2"} and "exits_ms" not in calls["2"]
    assert 0 < calls["4"]["exits_ms"]["2"] < calls["4"]["median_ms"]
    at = QuantilePredictor(prof, 2)
    assert at.reach("fp32", 4, 2) == calls["4"]["exits_ms"]["2"]
    del calls["4"]["exits_ms"]                   # an older profile: a whole call at the exit instead
    assert QuantilePredictor(prof, 2).reach("fp32", 4, 2) == calls["2"]["median_ms"]
