"""How bundle tensors appear in Triton: model names, batching, dims and data types.

Triton batches a model (max_batch_size > 0) along dim 0 of every input and output, so all of them
must carry the same row axis. A graph whose tensors are all "batch" (or all "2*batch" inside a
guided graph) is batched; one that mixes them (a guided head: V has 2B rows, cfg_scale B) is
served unbatched, full shapes with -1 rows. A per-row scalar (shape (B,)) travels as (B, 1) and is
reshaped to (B,) for the graph (Triton wants at least one dim besides the batch).
"""

from __future__ import annotations

import re

from odelt.bundle.iospec import GraphSpec, TensorSpec

SAMPLER = "odelt_sampler"
TRITON_DTYPES = {"float32": "TYPE_FP32", "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bytes": "TYPE_STRING"}


def model_name(graph: str) -> str:
    """Triton model (and folder) name of a bundle graph: "blocks_0-3" -> "odelt_blocks_0_3"."""
    return "odelt_" + re.sub(r"[^A-Za-z0-9_]", "_", graph)


def batched(graph: GraphSpec) -> bool:
    """True when every tensor of the graph has the same dynamic row axis at dim 0."""
    axes = {t.shape[0] if t.shape and isinstance(t.shape[0], str) else None for t in (*graph.inputs, *graph.outputs)}
    return len(axes) == 1 and None not in axes


def dims(spec: TensorSpec, is_batched: bool) -> tuple[list[int], list[int] | None]:
    """(config dims, reshape or None) of a tensor: without the row axis when batched, else with -1s."""
    if not is_batched:
        return [d if isinstance(d, int) else -1 for d in spec.shape], None
    rest = [int(d) for d in spec.shape[1:]]
    return (rest, None) if rest else ([1], [])


def wire_shape(spec: TensorSpec, rows: int, is_batched: bool) -> tuple[int, ...]:
    """The shape a caller sends for a tensor of `rows` rows (the graph's own shape, or (rows, 1))."""
    rest = tuple(int(d) for d in spec.shape[1:])
    return (rows, *rest) if rest or not is_batched else (rows, 1)
