"""The sampler model's engine mode: every request in flight feeds one in-process batching engine.

The BLS mode sends every step of every request to the graph models as a BLS request (a round
trip through Triton per graph per step: copies both ways, and the dynamic batcher only merges what
happens to arrive together). Here the `odelt_sampler` model is decoupled: `execute` checks and
plans each request (the same SamplerService.prepare as the BLS mode: same labels, same plan, same
one-line errors), submits it to an odelt.runtime.engine.Engine running over a backend opened in
this process (ONNX Runtime by default; the backend is a model parameter), and returns at once.
The engine gathers the rows of every request at every step into one pass. A latent bundle's
request leaves the engine as latents and is decoded in the decode thread (odelt.serving.decoding:
the request's decoder, opened in this process over the same backend kind), so the reply carries pixels and its measured_ms counts the decode; the
plan was chosen with that decode counted (SamplerService.prepare). The outbox thread talks to
Triton for it: it sends each response when its request leaves, and asks the requests in
flight whether their clients are still there (a gRPC client that cancels its stream is seen; an HTTP
client that goes away is not, in tritonserver 2.51: docs/serving.md).

Model parameters (config.pbtxt): mode "engine", backend (ort | openvino: the repository's engine set
`engine_set`, copied into the sampler's bundle), threads (intra-op threads of the backend's sessions),
max_rows (rows per pass), window_ms and refill_ms (the engine's gathering windows), layout, precision,
max_images, decoder (a latent bundle's default decoder kind), decode_batched ("1": decode the
requests that left together in one call; default "0", each alone: odelt.serving.decoding says why).
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from odelt.bundle.bundle import open_bundle
from odelt.errors import ConfigError
from odelt.runtime.backends import open_backend
from odelt.runtime.engine import Engine, EngineOptions, Job, Ticket
from odelt.serving.decoding import DecodeStage

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
    (is the client still there?) is asked by the outbox every PROBE_S, False cancels the request.
    A latent bundle's requests go through `decoding` (a DecodeStage) between the engine and the outbox."""

    def __init__(self, service: Any, engine: Engine, backend: Any, decoding: DecodeStage | None = None):
        self.service, self.engine, self.backend, self.decoding = service, engine, backend, decoding
        self.outbox = Outbox()

    def submit(self, n: int, seed: int, labels: np.ndarray | None, guidance: float | None,
               params: Mapping[str, Any], reply: Reply, alive: Callable[[], bool] | None = None) -> Ticket:
        req = self.service.prepare(n, seed, labels, guidance, params)
        if req.decoder is not None and self.decoding is None:
            raise ConfigError("this engine service has no decoder stage; expected a service opened on the latent "
                              "bundle's folder with its decoder graphs")
        budget = params.get("budget_ms")
        job = Job(n=n, seed=seed, schedule=req.schedule, labels=None if labels is None else req.y[:n],
                  guidance=guidance, plan=req.key[0], budget_ms=None if budget is None else float(budget),
                  predicted_ms=req.predicted_ms)
        kind = None if req.decoder is None else req.decoder.kind

        def decoded(images: np.ndarray | None, error: BaseException | None, at: float, t: Ticket) -> None:
            out = None if error is not None else self._reply(t, images, 1e3 * (at - t.submitted))
            self.outbox.put(reply, out, error)

        def done(t: Ticket) -> None:          # in the engine's thread: hand on, never decode or send here
            if t.error is not None:
                self.outbox.put(reply, None, t.error)
            elif kind is None:
                self.outbox.put(reply, self._reply(t, t.images, t.latency_ms), None)
            else:
                assert self.decoding is not None and t.images is not None
                self.decoding.put(t.images, kind, lambda images, error, at: decoded(images, error, at, t))
        ticket = self.engine.submit(job, done)
        if alive is not None:
            self.outbox.watch(ticket, alive)
        return ticket

    def _reply(self, t: Ticket, images: np.ndarray | None, measured_ms: float) -> dict[str, Any]:
        stats, dec = self.engine.stats, self.decoding
        counters = {"passes": stats.passes, "rows": stats.rows, "graph_calls": stats.graph_calls,
                    "graph_rows": stats.graph_rows, "cancelled": stats.cancelled, "failed": stats.failed,
                    "queue_ms": t.queue_ms, "decode_calls": dec.calls if dec else 0, "decode_rows": dec.rows if dec else 0}
        return {"images": images, "plan": t.job.plan, "predicted_ms": t.job.predicted_ms,
                "measured_ms": measured_ms, "stats": counters}

    def close(self) -> None:
        self.engine.stop()
        if self.decoding is not None:
            self.decoding.close()
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
    decoding = None
    try:
        engine = Engine(manifest, backend, EngineOptions(max_rows=max_rows, window_ms=window_ms, refill_ms=refill_ms))
        if manifest.decoders:
            decoding = open_decode_stage(manifest, params, threads, max_rows)
    except BaseException:
        backend.__exit__(None, None, None)
        raise
    return EngineService(make_service(manifest), engine.start(), backend, decoding)


def open_decode_stage(manifest: Any, params: Mapping[str, str], threads: int, max_rows: int) -> DecodeStage:
    """The decode thread of a latent bundle, its default decoder opened now (the first request
    should not wait for a session). Each kind opens at the precision its plans count
    (profile.decoder_precision_for), over the backend kind the engine runs on."""
    from odelt.runtime.backends.decoder import open_decoder
    from odelt.runtime.budget.profile import decoder_precision_for

    precision, backend = params["precision"], params.get("backend", "ort")

    def open_one(kind: str) -> Any:
        return open_decoder(manifest, kind, decoder_precision_for(manifest, kind, precision), threads,
                            use_engines=False, backend=backend).__enter__()
    stage = DecodeStage(open_one, max_rows, batched=params.get("decode_batched", "0") == "1")
    try:
        stage.decoder(params.get("decoder") or manifest.decoder().kind)
    except BaseException:
        stage.close()
        raise
    return stage
