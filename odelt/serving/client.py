"""A small client for the sampler model: Triton's HTTP/JSON endpoints (generate, config, stats), stdlib only.

One `Client` holds one keep-alive connection (use one per thread)::

    c = Client("http://127.0.0.1:8000")
    r = c.generate(n=4, seed=0, budget_ms=25)      # r.images (4, C, H, W), r.plan, r.predicted_ms, ...

A request the server rejects raises ServingError with the server's one-line message.
"""

from __future__ import annotations

import http.client
import json
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np

from odelt.errors import OdeltError
from odelt.serving.wire import SAMPLER


class ServingError(OdeltError):
    """The server answered with an error (its message is kept verbatim)."""


@dataclass(frozen=True)
class Generation:
    images: np.ndarray
    plan: str
    predicted_ms: float
    measured_ms: float
    stats: dict = field(default_factory=dict)   # engine mode: the engine's counters when it replied


class Client:
    def __init__(self, url: str, timeout_s: float = 120.0):
        u = urlparse(url)
        self.host, self.port, self.timeout = u.hostname or "127.0.0.1", u.port or 8000, timeout_s
        self._conn: http.client.HTTPConnection | None = None
        self._shape: tuple[int, ...] | None = None

    def _request(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        for attempt in (0, 1):                    # one retry on a connection the server closed
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
                r = self._conn.getresponse()
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def generate(self, n: int, seed: int = 0, labels: list[int] | None = None, guidance: float | None = None,
                 budget_ms: float | None = None, schedule: str | None = None,
                 decoder: str | None = None) -> Generation:
        """Through Triton's generate endpoint (JSON inputs by name): it serves both sampler modes, the
        decoupled engine model included, which the plain infer endpoint refuses over HTTP. `decoder`:
        a latent bundle's decoder kind (default: the bundle's)."""
        body: dict[str, Any] = {"n": [n], "seed": [seed]}
        if labels is not None:
            body["labels"] = list(labels)
        if guidance is not None:
            body["guidance"] = [guidance]
        body["parameters"] = {k: v for k, v in (("budget_ms", budget_ms), ("schedule", schedule),
                                                     ("decoder", decoder)) if v is not None}
        status, out = self._request("POST", f"/v2/models/{SAMPLER}/generate", body)
        if status != 200:
            raise ServingError((out or {}).get("error", f"HTTP {status}"))
        images = np.asarray(out["images"], np.float32).reshape(n, *self._image_shape())
        return Generation(images, str(_first(out["plan"])), _number(out["predicted_ms"]),
                          float(_number(out["measured_ms"])), json.loads(_first(out.get("stats", "{}")) or "{}"))

    def _image_shape(self) -> tuple[int, ...]:
        if self._shape is None:
            status, config = self._request("GET", f"/v2/models/{SAMPLER}/config")
            if status != 200:
                raise ServingError((config or {}).get("error", f"HTTP {status}"))
            dims = next(o["dims"] for o in config["output"] if o["name"] == "images")
            self._shape = tuple(int(d) for d in dims[1:])
        return self._shape

    def model_stats(self, model: str) -> dict[str, Any]:
        status, body = self._request("GET", f"/v2/models/{model}/stats")
        if status != 200:
            raise ServingError((body or {}).get("error", f"HTTP {status}"))
        return body["model_stats"][0]

    def ready(self, model: str = SAMPLER) -> bool:
        try:
            return self._request("GET", f"/v2/models/{model}/ready")[0] == 200
        except OSError:
            return False


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) else value


def _number(value: Any) -> float:
    v = _first(value)
    return math.nan if v is None else float(v)
