"""One velocity evaluation for many requests' rows: which graph calls take which rows.

The rows of a pass come sorted by chain length (longest first), each request's rows together. With
per-graph access (a backend's `run_graph`, or ONNX Runtime's sessions) every graph of the layout runs
once, on the rows whose length's chain holds it: the conditioning graph on all, a chunk on the rows
whose length passes through it (with nested chains, a prefix: a slice, no gather), each exit head on
the rows that leave there. Outputs named `<n>_out` are stored as `<n>` (odelt.bundle.chain's
dataflow), per row. A backend that only runs whole chains (`infer`, one length per call) gets one
call per length, on that length's rows.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from odelt.bundle.bundle import Bundle
from odelt.bundle.chain import chain_feeds
from odelt.bundle.iospec import GraphSpec
from odelt.errors import ConfigError

RunGraph = Callable[[GraphSpec, dict[str, np.ndarray]], Mapping[str, np.ndarray]]


class Gatherer:
    """Runs one pass's rows through a backend; counts graph calls and the rows they took."""

    def __init__(self, manifest: Bundle, backend: Any):
        self.backend = backend
        self.run_graph: RunGraph | None = graph_runner(backend)
        lengths = tuple(backend.lengths)
        self.chains = {n: [g.name for g in manifest.chain(n, backend.layout)] for n in lengths}
        self.graphs = {g.name: g for n in lengths for g in manifest.chain(n, backend.layout)}
        self.order = _graph_order(self.chains)
        self.calls = self.rows = 0

    def velocity(self, env: dict[str, np.ndarray], keys: list[int], bounds: list[tuple[int, int]]) -> np.ndarray:
        """env: the pass's x, t, dt_base, y, l (rows); keys: each request's length; bounds: its rows."""
        if self.run_graph is not None:
            return self._graphs(env, keys, bounds)
        return self._by_length(env, keys, bounds)

    def _graphs(self, env: dict[str, np.ndarray], keys: list[int], bounds: list[tuple[int, int]]) -> np.ndarray:
        """Each graph once, on the rows whose chain holds it (rows sorted by chain length, so a nested
        chain's rows are a prefix: a slice, no gather)."""
        assert self.run_graph is not None
        total = bounds[-1][1]
        for name in self.order:
            spans = [b for b, k in zip(bounds, keys) if name in self.chains[k]]
            if not spans:
                continue
            sel = _selection(spans, total)
            graph = self.graphs[name]
            inputs = chain_feeds(graph, _Rows(env, sel))
            outputs = self.run_graph(graph, inputs)
            rows = sum(b1 - b0 for b0, b1 in spans)
            self.calls += 1
            self.rows += rows
            for out_name, value in outputs.items():
                key = out_name[:-4] if out_name.endswith("_out") else out_name
                if sel is None:
                    env[key] = value
                else:
                    if key not in env or env[key].shape[1:] != value.shape[1:]:
                        env[key] = np.zeros((total, *value.shape[1:]), value.dtype)
                    env[key][sel] = value
        return env["velocity"]

    def _by_length(self, env: dict[str, np.ndarray], keys: list[int], bounds: list[tuple[int, int]]) -> np.ndarray:
        """A backend that runs whole chains: one call per length, on that length's rows."""
        v = np.empty_like(env["x"])
        for length in dict.fromkeys(keys):
            sel = _selection([b for b, k in zip(bounds, keys) if k == length], int(v.shape[0]))
            feeds = {k: (a if sel is None else a[sel]) for k, a in env.items()}
            out = self.backend.infer(feeds)["velocity"]
            self.calls += 1
            self.rows += int(out.shape[0])
            v[sel if sel is not None else slice(None)] = out
        return v


class _Rows(Mapping[str, np.ndarray]):
    """The selected rows of the pass's tensors, cut only for the names a graph reads."""

    def __init__(self, env: dict[str, np.ndarray], sel: Any):
        self.env, self.sel = env, sel

    def __getitem__(self, key: str) -> np.ndarray:
        a = self.env[key]
        return a if self.sel is None else a[self.sel]

    def __contains__(self, key: object) -> bool:
        return key in self.env

    def __iter__(self) -> Any:
        return iter(self.env)

    def __len__(self) -> int:
        return len(self.env)


def _selection(spans: list[tuple[int, int]], total: int) -> Any:
    """Rows of these (start, end) spans: None for all `total` rows, a slice when contiguous, else indices."""
    spans = sorted(spans)
    if all(a[1] == b[0] for a, b in zip(spans, spans[1:])):
        lo, hi = spans[0][0], spans[-1][1]
        return None if (lo, hi) == (0, total) else slice(lo, hi)
    return np.concatenate([np.arange(b0, b1) for b0, b1 in spans])


def _graph_order(chains: Mapping[int, list[str]]) -> list[str]:
    """One run order of every graph that respects each chain's order (a topological sort)."""
    after: dict[str, set[str]] = {}
    for chain in chains.values():
        for a, b in zip(chain, chain[1:]):
            after.setdefault(b, set()).add(a)
        for g in chain:
            after.setdefault(g, set())
    order: list[str] = []
    while after:
        ready = sorted(g for g, deps in after.items() if not deps - set(order))
        if not ready:
            raise ConfigError(f"the bundle's chains order their graphs in a circle: {sorted(after)}")
        order += ready
        for g in ready:
            del after[g]
    return order


def graph_runner(backend: Any) -> RunGraph | None:
    """How the engine runs one graph on a backend: its `run_graph` when it has one, ONNX Runtime's
    sessions; None for a backend that only runs whole chains (rows then share calls per length)."""
    run = getattr(backend, "run_graph", None)
    if callable(run):
        return run
    sessions = getattr(backend, "sessions", None)
    if isinstance(sessions, dict) and sessions and getattr(backend, "device", "cpu") == "cpu":
        names: dict[str, list[str]] = {}

        def run_session(graph: GraphSpec, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            out = names.get(graph.name) or names.setdefault(graph.name, [t.name for t in graph.outputs])
            return dict(zip(out, sessions[graph.name].run(out, feeds)))
        return run_session
    return None


