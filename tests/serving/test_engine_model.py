"""The engine mode's service outside Triton: the outbox sends replies and asks clients whether they
are still there, so that neither waits in the engine's thread. Real engine, real ONNX Runtime
backend over the tiny serving bundle; the reply callbacks stand in for Triton's response sender."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from odelt.runtime.engine import Cancelled
from odelt.serving.engine_model import open_engine_service
from odelt.serving.sampler_model import SamplerService

PARAMS = {"threads": "1", "max_rows": "8", "window_ms": "0", "layout": "segments", "precision": "fp32"}


@pytest.fixture
def service(serve_bundle):
    svc = open_engine_service(serve_bundle, PARAMS, lambda m: SamplerService(m, None, "fp32", 8))
    yield svc
    svc.close()


class Box:
    def __init__(self, block: threading.Event | None = None):
        self.out, self.error, self.block = None, None, block
        self.sent = threading.Event()

    def __call__(self, out, error) -> None:
        if self.block is not None:
            self.block.wait(30)                      # a response sender that takes its time
        self.out, self.error = out, error
        self.sent.set()


def test_a_reply_that_blocks_does_not_stall_the_engine(service):
    held = threading.Event()
    slow = Box(held)
    service.submit(1, 0, None, None, {"schedule": "uniform:euler:1"}, slow)
    others = [Box() for _ in range(4)]
    for i, box in enumerate(others):
        service.submit(2, i, None, None, {"schedule": "uniform:euler:2"}, box)
    try:
        # the engine went on with every other request: their tickets finished while the first reply
        # was still being sent (their own replies wait behind it in the one outbox)
        for _ in range(400):
            if service.engine.stats.finished >= 5:
                break
            threading.Event().wait(0.025)
        assert service.engine.stats.finished == 5 and not slow.sent.is_set()
    finally:
        held.set()
    assert slow.sent.wait(10) and all(b.sent.wait(10) for b in others)
    assert slow.out["images"].shape == (1, 1, 8, 8) and all(b.error is None for b in others)


def test_a_client_that_went_away_is_cancelled_and_the_others_finish(service):
    here = threading.Event()
    here.set()
    gone, stays = Box(), Box()
    asked = []

    def alive() -> bool:
        asked.append(threading.current_thread().name)
        return here.is_set()
    ticket = service.submit(4, 3, None, None, {"schedule": "uniform:euler:1000"}, gone, alive)
    service.submit(2, 5, None, None, {"schedule": "uniform:euler:8"}, stays, lambda: True)
    assert stays.sent.wait(30) and stays.error is None
    here.clear()                                     # the client goes away mid-request
    assert gone.sent.wait(30)
    assert isinstance(gone.error, Cancelled) and ticket.cancelled
    assert service.engine.stats.cancelled == 1 and service.engine.stats.failed == 0
    assert service.engine.stats.rows < 4 * 1000       # stopped early, not run to its end
    assert set(asked) == {"odelt-outbox"}            # never asked from the engine's thread
    assert np.isfinite(stays.out["images"]).all()
