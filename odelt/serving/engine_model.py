"""The sampler model's engine mode: every request in flight feeds one in-process batching engine.

The BLS mode sends every step of every request to the graph models as a BLS request (a round
trip through Triton per graph per step: copies both ways, and the dynamic batcher only merges what
happens to arrive together). Here the `odelt_sampler` model is decoupled: `execute` checks and
plans each request (the same SamplerService.prepare as the BLS mode: same labels, same plan, same
one-line errors), submits it to an odelt.runtime.engine.Engine running over a backend opened in
this process (ONNX Runtime by default; the backend is a model parameter), and returns at once.
The engine gathers the rows of every request at every step into one pass. The outbox thread
talks to Triton for it: it sends each response when its request leaves, and asks the requests in
flight whether their clients are still there (a gRPC client that cancels its stream is seen; an HTTP
client that goes away is not, in tritonserver 2.51: docs/serving.md).

Model parameters (config.pbtxt): mode "engine", backend (ort | openvino: the repository's engine set
`engine_set`, copied into the sampler's bundle), threads (intra-op threads of the backend's sessions),
max_rows (rows per pass), window_ms and refill_ms (the engine's gathering windows), layout, precision,
max_images.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from odelt.bundle.bundle import open_bundle
from odelt.errors import ConfigError, OdeltError
from odelt.runtime.backends import open_backend
from odelt.runtime.engine import Engine, EngineOptions, Job, Ticket

Reply = Callable[[dict[str, Any] | None, BaseException | None], None]


# How often the clients of requests in flight are asked whether they are still there: each ask is an
# IPC round trip per request, and a request worth cancelling runs far longer than this.
PROBE_S = 0.05


class Outbox:
    """The one thread that talks to Triton about requests in flight, so that the engine's thread
    never waits on it. It sends each reply: Triton's response sender blocks until the server process
    has taken the response (an IPC round trip), and from the engine's thread every reply would stall
    the passes of all the other requests. Every PROBE_S it also asks each request's `alive` (the
    response sender's is_cancelled: another round trip) and cancels the ticket of one whose client
    went away; the engine drops its rows at its next pass."""

    def __init__(self, probe_s: float = PROBE_S):
        self.probe_s = probe_s
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._watched: list[tuple[Ticket, Callable[[], bool]]] = []       # touched by the outbox thread only
        self._thread = threading.Thread(target=self._run, name="odelt-outbox", daemon=True)
        self._thread.start()

    def put(self, reply: Reply, out: dict[str, Any] | None, error: BaseException | None) -> None:
        self._queue.put(("reply", reply, out, error))

    def watch(self, ticket: Ticket, alive: Callable[[], bool]) -> None:
        self._queue.put(("watch", ticket, alive))

    def _run(self) -> None:
        due = time.monotonic() + self.probe_s
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, due - time.monotonic()) if self._watched else None)
            except queue.Empty:
                item = ("probe",)
            if item is None:
                return
            if item[0] == "reply":
                self._send(*item[1:])
            elif item[0] == "watch":
                self._watched.append(item[1:])
            if time.monotonic() >= due:
                self._probe()
                due = time.monotonic() + self.probe_s

    @staticmethod
    def _send(reply: Reply, out: dict[str, Any] | None, error: BaseException | None) -> None:
        try:
            reply(out, error)
        except Exception:  # noqa: BLE001, S110 - a reply that cannot be sent (client gone) must not stop the others
            pass

    def _probe(self) -> None:
        live = []
        for ticket, alive in self._watched:
            if ticket.done():
                continue
            try:
                gone = not alive()
            except Exception:  # noqa: BLE001 - a probe that fails says nothing: keep the request
                gone = False
            if gone:
                ticket.cancel()
            else:
                live.append((ticket, alive))
        self._watched = live

    def close(self, timeout: float = 30.0) -> None:
        """Send what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)


class EngineService:
    """Checks and plans requests with `service` (sampler_model.SamplerService without a backend: its
    `prepare`), runs them on `engine`, replies through a callback sent by the outbox; `alive()`
    (is the client still there?) is asked by the outbox every PROBE_S, False cancels the request."""

    def __init__(self, service: Any, engine: Engine, backend: Any):
        self.service, self.engine, self.backend = service, engine, backend
        self.outbox = Outbox()

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
                self.outbox.put(reply, None, t.error)
                return
            counters = {"passes": stats.passes, "rows": stats.rows, "graph_calls": stats.graph_calls,
                        "graph_rows": stats.graph_rows, "cancelled": stats.cancelled, "failed": stats.failed,
                        "queue_ms": t.queue_ms}
            self.outbox.put(reply, {"images": t.images, "plan": t.job.plan, "predicted_ms": t.job.predicted_ms,
                                     "measured_ms": t.latency_ms, "stats": counters}, None)
        ticket = self.engine.submit(job, done)
        if alive is not None:
            self.outbox.watch(ticket, alive)
        return ticket

    def close(self) -> None:
        self.engine.stop()
        self.outbox.close()
        self.backend.__exit__(None, None, None)


def open_engine_service(bundle: Path, params: Mapping[str, str],
                        make_service: Callable[[Any], Any]) -> EngineService:
    """The engine the model config describes, its backend opened and its thread started;
    make_service(manifest) -> the request checker and planner."""
    manifest = open_bundle(bundle, check_files=False)      # holds the layout's graphs, not every file listed
    try:
        threads, max_rows = int(params.get("threads", "1")), int(params["max_rows"])
        window_ms, refill_ms = float(params.get("window_ms", "0")), float(params.get("refill_ms", "0"))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"odelt_sampler engine parameters: expected integers threads, max_rows and a number "
                          f"window_ms and refill_ms, found {dict(params)} ({e})") from None
    backend = open_backend(params.get("backend", "ort"), manifest, layout=params["layout"],
                           precision=params["precision"], threads=threads, use_engines=False,
                           engine_set=params.get("engine_set") or None).__enter__()
    try:
        engine = Engine(manifest, backend, EngineOptions(max_rows=max_rows, window_ms=window_ms, refill_ms=refill_ms)).start()
    except OdeltError:
        backend.__exit__(None, None, None)
        raise
    return EngineService(make_service(manifest), engine, backend)
