"""Small ONNX helpers: IO checks against a GraphSpec, weight accounting, saving with external data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from odelt.errors import ExportError
from odelt.bundle.iospec import GraphSpec, TensorSpec

_ONNX_DTYPES = {"float32": 1, "int32": 6, "int64": 7, "float16": 10}
PROTOBUF_LIMIT = 2**31 - 1 - 2**26         # stay clear of protobuf's 2 GiB message limit


def op_types(model) -> set[str]:
    return {n.op_type for n in model.graph.node}


def _value_info(t: TensorSpec):
    from onnx import helper

    return helper.make_tensor_value_info(t.name, _ONNX_DTYPES[t.dtype], list(t.shape))


def restore_unused_inputs(model, spec: GraphSpec) -> None:
    """Put back declared inputs the tracer dropped because nothing reads them (dt_base of an
    ignore_dt model, x of a graph with no live block), so every graph has the IO its spec says."""
    restore_inputs(model, [_value_info(t) for t in spec.inputs])


def restore_inputs(model, declared: list) -> None:
    """Put back the `declared` inputs (ValueInfoProtos, in order) the graph lacks, keeping the graph's
    own entry where it has one. Tools that prune a graph drop inputs nothing reads; every caller binds
    the declared ones (ONNX Runtime's IOBinding refuses a name the session does not have)."""
    have = {i.name: i for i in model.graph.input}
    if all(v.name in have for v in declared):
        return
    names = {v.name for v in declared}
    ordered = [have.get(v.name) or v for v in declared] + [i for i in model.graph.input if i.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(ordered)


def _shape(vi) -> tuple[int | str, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim)


def check_io(model, spec: GraphSpec) -> None:
    """The traced graph's inputs and outputs are exactly the spec's names, dtypes and ranks."""
    for what, got, want in (("inputs", model.graph.input, spec.inputs), ("outputs", model.graph.output, spec.outputs)):
        found = [(v.name, v.type.tensor_type.elem_type, len(_shape(v))) for v in got]
        expected = [(t.name, _ONNX_DTYPES[t.dtype], len(t.shape)) for t in want]
        if found != expected:
            raise ExportError(f"graph {spec.name}: {what} are {found}, expected {expected} (name, onnx dtype, rank)")


def _tensor_bytes(t) -> int:
    from onnx import helper

    return int(np.prod(t.dims, dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def weight_bytes(model) -> int:
    """Bytes of all constant tensors (initializers and Constant nodes), wherever they are stored."""
    total = sum(_tensor_bytes(t) for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            total += sum(_tensor_bytes(a.t) for a in node.attribute if a.name == "value")
    return total


def save_graph(model, path: Path, external: bool) -> str | None:
    """Save `model` to `path` atomically (odelt.fileio); with external data, weights go to
    `<file>.onnx.data` beside it. Returns that data file's path relative to the bundle root, or None."""
    import onnx

    from odelt.fileio import atomic_path

    external = external or weight_bytes(model) > PROTOBUF_LIMIT
    data = path.parent / f"{path.name}.data"
    kw = dict(save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
              size_threshold=1024) if external else {}
    data.unlink(missing_ok=True)                 # onnx appends to an existing data file
    try:
        with atomic_path(path, suffix=".onnx") as tmp:
            onnx.save_model(model, str(tmp), **kw)   # external data lands beside tmp, i.e. at `data`
    except BaseException:
        data.unlink(missing_ok=True)
        raise
    return f"{path.parent.name}/{data.name}" if external and data.is_file() else None


def initializer_digests(path: Path, min_bytes: int = 1024) -> dict[str, str]:
    """{sha256 of the bytes: name} for every initializer of at least `min_bytes` (loads external data)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    out = {}
    for t in model.graph.initializer:
        arr = numpy_helper.to_array(t)
        if arr.nbytes >= min_bytes:
            out[hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()] = t.name
    return out
