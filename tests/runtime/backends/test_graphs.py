"""ChainBackend: the Backend protocol over any run_graph, checked against the bound ONNX Runtime
backend on the same noise, and for which graphs it runs."""

from __future__ import annotations

import numpy as np
import pytest

from odelt.calibration.trajectories import OrtGraphs, Recorder
from odelt.errors import RuntimeFailure
from odelt.ode.heuristics import resolve_schedule
from odelt.runtime.backends import open_backend
from odelt.runtime.backends.graphs import ChainBackend
from odelt.runtime.sampler import Sampler, make_labels, make_noise


def _feeds(length: int, batch: int = 2) -> dict[str, np.ndarray]:
    return {"x": make_noise(0, batch, (1, 8, 8)), "t": np.full(batch, 0.5, np.float32),
            "dt_base": np.zeros(batch, np.int32), "y": make_labels(batch, 10),
            "l": np.full(batch, length, np.int32)}


@pytest.mark.parametrize("layout", ["segments", "per-length"])
def test_samples_like_the_bound_ort_backend(tiny_bundle, layout):
    schedule = resolve_schedule("uniform:heun:3", length=4)
    x0, y = make_noise(1, 3, (1, 8, 8)), make_labels(3, 10)
    with ChainBackend(tiny_bundle, OrtGraphs(tiny_bundle), layout) as be:
        assert be.layout == layout and be.lengths == tuple(tiny_bundle.lengths)
        chained, _ = Sampler(be, tiny_bundle, schedule).sample(x0, y)
    with open_backend("ort", tiny_bundle, layout=layout) as be:
        bound, _ = Sampler(be, tiny_bundle, schedule).sample(x0, y)
    np.testing.assert_allclose(chained, bound, atol=1e-6)
    assert np.abs(chained - x0).max() > 0.1


def test_runs_the_lengths_chain_in_order_and_skips_fed_conditioning(tiny_bundle):
    recorder = Recorder(OrtGraphs(tiny_bundle))
    be = ChainBackend(tiny_bundle, recorder)            # layout None: the bundle's default
    assert be.layout == tiny_bundle.default_layout()
    chain = tiny_bundle.chain(2, be.layout)
    out = be.infer(_feeds(2))["velocity"]
    assert out.shape == (2, 1, 8, 8) and list(recorder.feeds) == [g.name for g in chain]
    conditioning = [g for g in chain if g.kind == "conditioning"]
    assert conditioning                                 # the segments layout hoists it
    mods = dict(OrtGraphs(tiny_bundle)(conditioning[0], recorder.feeds[conditioning[0].name][0]))
    again = Recorder(OrtGraphs(tiny_bundle))
    fed = ChainBackend(tiny_bundle, again).infer({**_feeds(2), **mods})["velocity"]
    assert conditioning[0].name not in again.feeds
    np.testing.assert_allclose(fed, out, atol=1e-6)


def test_one_offered_length_per_call(tiny_bundle):
    be = ChainBackend(tiny_bundle, OrtGraphs(tiny_bundle))
    mixed = {**_feeds(2), "l": np.array([2, 4], np.int32)}
    with pytest.raises(RuntimeFailure, match="one length per call"):
        be.infer(mixed)
    with pytest.raises(RuntimeFailure, match="length 3 is not offered"):
        be.infer(_feeds(3))
