"""The sampler model's engine mode: every request in flight feeds one in-process batching engine.

The BLS mode sends every step of every request to the graph models as a BLS request (a round
trip through Triton per graph per step: copies both ways, and the dynamic batcher only merges what
happens to arrive together). Here the `odelt_sampler` model is decoupled: `execute` checks and
plans each request (the same SamplerService.prepare as the BLS mode: same labels, same plan, same
one-line errors), submits it to an odelt.runtime.engine.Engine running over a backend opened in
this process (ONNX Runtime by default; the backend is a model parameter), and returns at once.
The engine gathers the rows of every request at every step into one pass and, when a request
leaves, sends its response from the engine's thread.

Model parameters (config.pbtxt): mode "engine", backend (ort | openvino: the repository's engine set
`engine_set`, copied into the sampler's bundle), threads (intra-op threads of the backend's sessions), max_rows (rows per pass), window_ms (the
engine's gathering window), layout, precision, max_images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from odelt.bundle.bundle import open_bundle
from odelt.errors import ConfigError, OdeltError
from odelt.runtime.backends import open_backend
from odelt.runtime.engine import Engine, EngineOptions, Job, Ticket

Reply = Callable[[dict[str, Any] | None, BaseException | None], None]


class EngineService:
    """Checks and plans requests with `service` (sampler_model.SamplerService without a backend: its
    `prepare`), runs them on `engine`, replies through a callback."""

    def __init__(self, service: Any, engine: Engine, backend: Any):
        self.service, self.engine, self.backend = service, engine, backend

    def submit(self, n: int, seed: int, labels: np.ndarray | None, guidance: float | None,
               params: Mapping[str, Any], reply: Reply, alive: Callable[[], bool] | None = None) -> Ticket:
        req = self.service.prepare(n, seed, labels, guidance, params)
        if req.decoder is not None:
            raise ConfigError("the engine mode returns samples of pixel-space bundles; a latent bundle's decoder "
                              "stage runs in the BLS mode (write the repository with --sampler bls)")
        budget = params.get("budget_ms")
        job = Job(n=n, seed=seed, schedule=req.schedule, labels=None if labels is None else req.y[:n],
                  guidance=guidance, plan=req.key[0], budget_ms=None if budget is None else float(budget),
                  predicted_ms=req.predicted_ms)
        stats = self.engine.stats

        def done(t: Ticket) -> None:
            if t.error is not None:
                reply(None, t.error)
                return
            reply({"images": t.images, "plan": t.job.plan, "predicted_ms": t.job.predicted_ms,
                   "measured_ms": t.latency_ms,
                   "stats": {"passes": stats.passes, "rows": stats.rows, "graph_calls": stats.graph_calls,
                             "graph_rows": stats.graph_rows, "cancelled": stats.cancelled, "failed": stats.failed,
                             "queue_ms": t.queue_ms}}, None)
        return self.engine.submit(job, done, alive)

    def close(self) -> None:
        self.engine.stop()
        self.backend.__exit__(None, None, None)


def open_engine_service(bundle: Path, params: Mapping[str, str],
                        make_service: Callable[[Any], Any]) -> EngineService:
    """The engine the model config describes, its backend opened and its thread started;
    make_service(manifest) -> the request checker and planner."""
    manifest = open_bundle(bundle, check_files=False)      # holds the layout's graphs, not every file listed
    try:
        threads, max_rows = int(params.get("threads", "1")), int(params["max_rows"])
        window_ms = float(params.get("window_ms", "0"))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"odelt_sampler engine parameters: expected integers threads, max_rows and a number "
                          f"window_ms, found {dict(params)} ({e})") from None
    backend = open_backend(params.get("backend", "ort"), manifest, layout=params["layout"],
                           precision=params["precision"], threads=threads, use_engines=False,
                           engine_set=params.get("engine_set") or None).__enter__()
    try:
        engine = Engine(manifest, backend, EngineOptions(max_rows=max_rows, window_ms=window_ms)).start()
    except OdeltError:
        backend.__exit__(None, None, None)
        raise
    return EngineService(make_service(manifest), engine, backend)
