"""One backend over any graph runner: the runtime's Backend protocol on top of
odelt.bundle.chain.run_chain, for callers that run graphs their own way (one ONNX Runtime session
per file in calibration, a recorder of every graph's inputs, ONNX Runtime's plain `session.run`,
a Triton BLS request per graph).

`run_graph(spec, feeds) -> outputs` runs one graph: `spec` is the graph's GraphSpec (its name,
inputs and outputs), `feeds` its inputs by name; it returns the outputs by name. The runner owns
whatever it opens (sessions, connections): entering the backend opens nothing.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from odelt.bundle.bundle import Bundle
from odelt.bundle.chain import AfterSegment, RunGraph, run_chain
from odelt.runtime.backends.protocol import chain_length


class ChainBackend:
    """`infer` runs the chain of the length in feeds["l"] (one per call), one `run_graph` per graph;
    a conditioning graph whose outputs came with the feeds (a modulation table) is not run."""

    name = "graphs"
    batch_bound = False            # the runner decides which batches it takes

    def __init__(self, bundle: Bundle, run_graph: RunGraph, layout: str | None = None):
        self.bundle, self.run_graph = bundle, run_graph
        self.layout = layout or bundle.default_layout()
        self.lengths = tuple(bundle.lengths)

    def __enter__(self) -> ChainBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def infer(self, feeds: Mapping[str, np.ndarray],
              after_segment: AfterSegment | None = None) -> Mapping[str, np.ndarray]:
        length = chain_length(feeds, self.lengths)
        return {"velocity": run_chain(self.bundle, length, feeds, self.run_graph, self.layout, after_segment)}
