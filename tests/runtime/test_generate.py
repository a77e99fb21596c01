"""The runtime over ONNX Runtime against the PyTorch reference sampler, on the same noise."""

from __future__ import annotations

import numpy as np
import pytest

from odelt.runtime.backends import open_backend
from odelt.ode.heuristics import resolve_schedule
from odelt.runtime.reference import torch_sample
from odelt.runtime.sampler import Sampler, make_labels, make_noise
from odelt.ode.solvers import SOLVERS

TOL = 1e-3


def _inputs(n=3, seed=0):
    return make_noise(seed, n, (1, 8, 8)), make_labels(n, 10)


def _run(bundle, schedule, x0, y, layout=None, guidance_scale=None, backend="ort"):
    with open_backend(backend, bundle, layout=layout) as be:
        out, stats = Sampler(be, bundle, schedule, guidance_scale).sample(x0, y)
    return out, stats


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_every_solver_matches_pytorch(tiny_dit, tiny_bundle, solver):
    schedule = resolve_schedule(f"cosine:{solver}:4", length=4)
    x0, y = _inputs()
    out, stats = _run(tiny_bundle, schedule, x0, y)
    ref = torch_sample(tiny_dit, schedule, x0, y)
    assert np.abs(out - ref).max() <= TOL
    assert np.abs(out - x0).max() > 0.1                      # it did integrate something
    if schedule.nfe is not None:
        assert stats.calls == schedule.nfe


@pytest.mark.parametrize("length", [2, 4])
def test_per_length_layout_and_lengths(tiny_dit, tiny_bundle, length):
    schedule = resolve_schedule("uniform:heun:3", length=length)
    x0, y = _inputs()
    ref = torch_sample(tiny_dit, schedule, x0, y)
    for layout in ("segments", "per-length"):
        out, _ = _run(tiny_bundle, schedule, x0, y, layout=layout)
        assert np.abs(out - ref).max() <= TOL, layout


def test_per_step_lengths(tiny_dit, tiny_bundle):
    import dataclasses
    schedule = dataclasses.replace(resolve_schedule("uniform:ipndm:4", length=4), lengths=(2, 4, 2, 4))
    x0, y = _inputs()
    out, _ = _run(tiny_bundle, schedule, x0, y)
    assert np.abs(out - torch_sample(tiny_dit, schedule, x0, y)).max() <= TOL
    fixed, _ = _run(tiny_bundle, schedule.with_lengths(4), x0, y)
    assert np.abs(out - fixed).max() > 1e-3                  # the per-step lengths were honoured


def test_guidance_on_host_and_in_graph(tiny_dit, tiny_bundle, tiny_cfg_bundle):
    schedule = resolve_schedule("uniform:euler:4", length=4)
    x0, y = _inputs()
    ref = torch_sample(tiny_dit, schedule, x0, y, guidance_scale=2.5)
    host, stats = _run(tiny_bundle, schedule, x0, y, guidance_scale=2.5)
    graph, _ = _run(tiny_cfg_bundle, schedule, x0, y, guidance_scale=2.5)
    assert np.abs(host - ref).max() <= TOL and np.abs(graph - ref).max() <= TOL
    assert stats.calls == 4
    plain, _ = _run(tiny_bundle, schedule, x0, y)
    assert np.abs(plain - ref).max() > 1e-2                  # guidance changed the samples


def test_batches_differ_in_size_and_buffers_are_reused(tiny_bundle):
    schedule = resolve_schedule("uniform:euler:2", length=4)
    x0, y = _inputs(5)
    with open_backend("ort", tiny_bundle) as be:
        sampler = Sampler(be, tiny_bundle, schedule)
        whole, _ = sampler.sample(x0, y)
        first, _ = sampler.sample(x0[:2], y[:2])
        size = be.buffer_bytes()
        again, _ = sampler.sample(x0[:2], y[:2])
        assert be.buffer_bytes() == size                      # same batch: no new buffers
    np.testing.assert_allclose(first, whole[:2], atol=1e-5)
    np.testing.assert_array_equal(first, again)


def test_naive_backend_agrees(tiny_bundle):
    schedule = resolve_schedule("uniform:midpoint:2", length=2)
    x0, y = _inputs()
    with open_backend("ort", tiny_bundle, naive=True) as be:
        naive, _ = Sampler(be, tiny_bundle, schedule).sample(x0, y)
    bound, _ = _run(tiny_bundle, schedule, x0, y)
    np.testing.assert_allclose(naive, bound, atol=1e-6)


def test_chain_sessions_share_one_arena_and_agree_with_their_own(tiny_bundle):
    schedule = resolve_schedule("uniform:euler:3", length=4)
    x0, y = _inputs()
    outs = []
    for shared in (True, False, True):                 # the process-wide arena is registered once, reused
        with open_backend("ort", tiny_bundle, shared_arena=shared) as be:
            assert be.shares_arena is shared
            outs.append(Sampler(be, tiny_bundle, schedule).sample(x0, y)[0])
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


def test_step_rows_are_shared_read_only_and_bounded(monkeypatch):
    from odelt.runtime.sampler import StepRows

    monkeypatch.setattr(StepRows, "LIMIT", 2)
    rows = StepRows(3, lengths=[4, 2], levels=[0, 1])
    a = rows.t(0.25)
    assert rows.t(np.float32(0.25)) is a and a.tolist() == [0.25] * 3 and a.dtype == np.float32
    assert not a.flags.writeable
    rows.t(0.5)
    c = rows.t(0.75)                      # over the limit: made, correct, not kept
    assert c.tolist() == [0.75] * 3 and sorted(rows.times) == [0.25, 0.5]
    assert rows.lengths[1].tolist() == [2, 2, 2] and rows.levels[1].dtype == np.int32
