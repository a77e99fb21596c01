"""The sampler model's logic outside Triton: bls_backend (the runtime's ChainBackend over BlsGraphs)
and SamplerService over a stand-in transport.

The transport here is a FAKE of Triton's BLS hop (it runs each graph model's ONNX file with ONNX
Runtime in this process, taking and giving the shapes a graph model takes and gives); the real
hop is exercised in test_server.py. This checks the runtime reuse and the request handling where
no tritonserver can run.
"""

from __future__ import annotations

import numpy as np
import pytest

from odelt.errors import ConfigError
from odelt.runtime.generate import GenerateOptions, generate_from_bundle
from odelt.serving.sampler_model import one_line
from tests.serving.helpers import fake_service


@pytest.fixture(scope="module")
def service(cpu_repo):
    return fake_service(cpu_repo)


def test_service_matches_generate_and_steps_through_the_graph_models(service, serve_bundle):
    out = service.handle(3, 11, None, None, {"budget_ms": 1e6})
    ref = generate_from_bundle(serve_bundle, GenerateOptions(n=3, batch=3, seed=11, budget_ms=1e6))
    assert out["plan"] == ref.plan.candidate.name
    np.testing.assert_allclose(out["images"], ref.images, rtol=0, atol=1e-6)
    assert {"odelt_cond", "odelt_blocks_0_1", "odelt_blocks_2_3", "odelt_head"} <= set(service.calls)


def test_service_errors_are_one_line(service):
    with pytest.raises(ConfigError, match="n must be in 1..8"):
        service.handle(20, 0, None, None, {"budget_ms": 10})
    with pytest.raises(ConfigError, match="budget_ms: expected a finite number > 0"):
        service.handle(1, 0, None, None, {"budget_ms": "soon"})
    assert one_line(ValueError("a\nb")) == "internal error in odelt_sampler: ValueError: a"
