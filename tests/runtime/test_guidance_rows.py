"""The one host-guidance rows rule (runtime.sampler.guidance_rows), used by generate, the Sampler
and the Triton sampler."""

from types import SimpleNamespace

import numpy as np

from odelt.runtime.sampler import guidance_rows, host_guidance


def test_rows_double_only_for_guidance_mixed_on_the_host():
    host, folded = SimpleNamespace(guidance=False), SimpleNamespace(guidance=True)
    assert [guidance_rows(host, 4, g) for g in (None, 1.0, 2.0, 0.0)] == [4, 4, 8, 8]
    assert [guidance_rows(folded, 4, g) for g in (None, 1.0, 2.0)] == [4, 4, 4]    # in-graph: the graph doubles
    assert host_guidance(host, 1.5) and not host_guidance(folded, 1.5)


def test_the_sampler_binds_the_rows_of_the_rule(tiny_bundle):
    from odelt.ode.heuristics import resolve_schedule
    from odelt.runtime.backends import open_backend
    from odelt.runtime.sampler import Sampler, make_labels, make_noise

    cfg = tiny_bundle.config
    with open_backend("ort", tiny_bundle, lengths=(max(tiny_bundle.lengths),), threads=1) as be:
        calls = []
        infer = be.infer
        be.infer = lambda feeds: calls.append(feeds["x"].shape[0]) or infer(feeds)   # count the rows of each call
        s = Sampler(be, tiny_bundle, resolve_schedule("uniform:euler:2", max(tiny_bundle.lengths)), guidance_scale=2.0)
        x0 = make_noise(0, 2, (cfg.in_channels, cfg.input_size, cfg.input_size))
        x, _ = s.sample(x0, make_labels(2, cfg.num_classes))
    assert calls == [guidance_rows(tiny_bundle, 2, 2.0)] * 2 == [4, 4] and np.isfinite(x).all()
