"""The engine mode's decoder stage: a latent bundle's requests leave the engine as latents and are
decoded here, in a thread of their own, so that no pass of the engine waits on a decode.

A request that leaves the engine is queued with its decoder kind (the bundle's default, or the
request's `decoder` parameter) and decoded alone, in the order requests left. With `batched`, the
decode thread instead takes everything queued when it wakes and decodes the latents of each kind in
one call (chunks of `max_rows`). Measured on the 2-core CPU (bench/serving_decode.py, digits-latent)
that did not pay: a decode per image costs about the same at batch 8 as at 1 there, and every
request of a batch waits for the whole batch, so its client sends its next request later (three runs:
0.97x, 0.81x and 1.03x the requests per second of decoding alone, within the noise of a shared
machine). It stays an option for devices where a batched decode is cheaper per image. Rows of a decoder graph do not depend on each other, so a request's
pixels are those `generate` decodes from its latents either way (up to float rounding of batched
kernels). If a batched decode fails, each request is decoded alone: the one whose rows fail gets
its one-line error, the others their images.

    stage = DecodeStage(lambda kind: open_decoder(manifest, kind).__enter__(), max_rows=8, batched=True)
    stage.put(latents, "sd", send)       # send(images, None, finished_at) or send(None, error, at)
    stage.close()
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from odelt.errors import OdeltError, RuntimeFailure, first_line

# (images or None, error or None, perf_counter time the decode ended)
Send = Callable[[np.ndarray | None, BaseException | None, float], None]


@dataclass(frozen=True)
class _Item:
    latents: np.ndarray
    kind: str
    send: Send


class DecodeStage:
    """One decode thread over decoders opened on first use by `open_one(kind)` (an entered decoder
    of odelt.runtime.backends.decoder). `batched=True` decodes the requests queued together in one
    call per kind (module doc: on a CPU it did not pay). `calls` and `rows` count the decodes run and the latents they took."""

    def __init__(self, open_one: Callable[[str], Any], max_rows: int, batched: bool = False,
                 clock: Callable[[], float] = time.perf_counter):
        self.open_one, self.max_rows, self.batched, self.clock = open_one, max_rows, batched, clock
        self.calls = self.rows = 0
        self._decoders: dict[str, Any] = {}
        self._lock = threading.Lock()            # opening a decoder: the service's start or the thread
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="odelt-decode", daemon=True)
        self._thread.start()

    def decoder(self, kind: str) -> Any:
        """The open decoder of `kind` (opened now if it is not yet)."""
        with self._lock:
            if kind not in self._decoders:
                self._decoders[kind] = self.open_one(kind)
            return self._decoders[kind]

    def put(self, latents: np.ndarray, kind: str, send: Send) -> None:
        self._queue.put(_Item(latents, kind, send))

    def _run(self) -> None:
        while True:
            items, stop = [self._queue.get()], False
            while not self._queue.empty():       # what else finished meanwhile joins this decode
                items.append(self._queue.get_nowait())
            if None in items:
                items, stop = [i for i in items if i is not None], True
            groups: dict[str, list[_Item]] = {}
            for item in items:
                groups.setdefault(item.kind, []).append(item)
            for group in groups.values():
                if self.batched:
                    self._decode(group)
                else:
                    for item in group:
                        self._decode([item])
            if stop:
                return

    def _decode(self, group: list[_Item]) -> None:
        try:
            dec = self.decoder(group[0].kind)
            latents = np.concatenate([i.latents for i in group])
            images = dec.decode(latents, self.max_rows)
        except Exception as e:  # noqa: BLE001 - whose rows failed: decode one request at a time
            if len(group) > 1:
                for item in group:
                    self._decode([item])
            else:
                _send(group[0].send, None, _as_odelt(e, group[0].kind), self.clock())
            return
        self.calls += -(-len(latents) // self.max_rows)
        self.rows += len(latents)
        done, lo = self.clock(), 0
        for item in group:
            hi = lo + len(item.latents)
            _send(item.send, images[lo:hi], None, done)
            lo = hi

    def close(self, timeout: float = 30.0) -> None:
        """Decode what is queued, then stop and close the decoders."""
        self._queue.put(None)
        self._thread.join(timeout)
        for dec in self._decoders.values():
            dec.__exit__(None, None, None)
        self._decoders = {}


def _send(send: Send, images: np.ndarray | None, error: BaseException | None, at: float) -> None:
    try:
        send(images, error, at)
    except Exception:  # noqa: BLE001, S110 - a reply that cannot be handed on must not stop the other decodes
        pass


def _as_odelt(e: BaseException, kind: str) -> OdeltError:
    if isinstance(e, OdeltError):
        return e
    return RuntimeFailure(f"decoder {kind} failed on this request's latents: {type(e).__name__}: {first_line(e)[:200]}")
