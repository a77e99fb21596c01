"""FP16 graphs: FP16 weights and matmuls, FP32 islands where FP16 loses accuracy.

Converter: ONNX Runtime's `onnxruntime.transformers.float16.convert_float_to_float16` (the same
converter onnxconverter-common ships and Polygraphy's `convert --fp-to-fp16` calls). Chosen because it
comes with onnxruntime, a dependency already, and takes both an op block list and a per-node block
list, which is exactly the control we need to keep the dataflow-selected islands (graph_roles) in FP32. ModelOpt AutoCast would pick islands from
value ranges (`data_max`), but it pulls in nvidia-modelopt and its CUDA-oriented dependencies; Polygraphy's
fp-to-fp16 wraps the same function without exposing the node block list.

The result is strongly typed: every tensor has one dtype, and the converter inserts explicit Casts at the
island borders, so TensorRT >= 10 builds it as written (no builder precision flags). IO stays FP32
(keep_io_types) so the runtime and every backend feed the same arrays for every precision.
"""

from __future__ import annotations

import onnx

from odelt.calibration.graph_roles import NORM_OPS, analyse, name_nodes
from odelt.errors import ExportError

# Kept FP32 by op type: normalisation statistics and softmax overflow/underflow in FP16 (the usual
# cause of black images in FP16 diffusion models); Exp/Tanh/Erf are the nonlinearities inside them.
FP32_OPS = (*NORM_OPS, "Softmax", "Exp", "Erf")


def fp16_from_onnx(model: onnx.ModelProto, keep_fp32_nodes: tuple[str, ...] = (),
                   token_inputs: tuple[str, ...] | None = None,
                   fp32_ops: tuple[str, ...] = FP32_OPS) -> tuple[onnx.ModelProto, dict]:
    """FP32 graph -> (mixed FP16 graph, report). `keep_fp32_nodes` are extra nodes the accuracy
    guard moved back to FP32 (fallback); `fp32_ops` the op types kept FP32 (the decoder stage adds
    its GroupNorm ops, odelt.calibration.decoder)."""
    from onnxruntime.transformers import float16  # lazy: only the quantize command needs it

    model = name_nodes(onnx.ModelProto.FromString(model.SerializeToString()))
    _materialise_identities(model)
    del model.graph.value_info[:]   # stale FP32 shape info would contradict the converted Casts
    roles = analyse(model, token_inputs)
    # Casts the exporter wrote (shape arithmetic -> float, e.g. the 1/head_dim scale) stay as written:
    # the converter re-types their consumers but not their `to`, which would not type-check.
    casts = {n.name for n in model.graph.node if n.op_type == "Cast"}
    node_block = sorted(roles.conditioning_nodes | roles.trunk_adds | casts | set(keep_fp32_nodes))
    _split_shared_initializers(model, set(node_block))
    op_block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(fp32_ops))
    out = float16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=op_block, node_block_list=node_block,
        disable_shape_infer=False)
    _elide_round_trips(out)
    _toposort(out)
    report = {
        "converter": "onnxruntime.transformers.float16.convert_float_to_float16 (+ FP32 round-trip elision)",
        "fp32_ops": list(fp32_ops),
        "fp32_nodes": {"conditioning": len(roles.conditioning_nodes), "residual_sums": len(roles.trunk_adds),
                       "fallback": sorted(keep_fp32_nodes)},
        "fp16_linears": [n for n in roles.block_linears if n not in keep_fp32_nodes],
    }
    return out, report


def _materialise_identities(model: onnx.ModelProto) -> None:
    """Identity(initializer) -> its own initializer. The TorchScript exporter deduplicates equal
    weights (e.g. all-zero biases) through Identity nodes, which would tie FP16 and FP32 users."""
    inits = {i.name: i for i in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            model.graph.initializer.append(copy)
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _split_shared_initializers(model: onnx.ModelProto, blocked: set[str]) -> None:
    """An initializer read by both FP32 (blocked) and FP16 nodes gets a private copy for the FP32
    ones; the converter would otherwise leave it FP32 for everyone and the graph would not type-check."""
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for x in node.input:
            users.setdefault(x, []).append(node)
    for init in list(model.graph.initializer):
        nodes = users.get(init.name, [])
        if not ({n.name in blocked for n in nodes} == {True, False}):
            continue
        copy = onnx.TensorProto()
        copy.CopyFrom(init)
        copy.name = f"{init.name}__fp32"
        model.graph.initializer.append(copy)
        for node in nodes:
            if node.name in blocked:
                node.input[:] = [copy.name if x == init.name else x for x in node.input]


def _elide_round_trips(model: onnx.ModelProto) -> None:
    """The converter stores every FP32 island's output as FP16 and casts it back for the next FP32
    node. Where an FP32 value feeds FP32 nodes (the residual stream: sum -> LayerNorm -> next sum),
    read the FP32 value directly, so the residual and velocity sums are never rounded to FP16."""
    producer = {o: n for n in model.graph.node for o in n.output}
    outputs = {o.name for o in model.graph.output}

    def to(node: onnx.NodeProto) -> int:
        return next(a.i for a in node.attribute if a.name == "to")

    rename = {}
    for node in model.graph.node:
        if node.op_type != "Cast" or to(node) != onnx.TensorProto.FLOAT:
            continue
        down = producer.get(node.input[0])
        if down is not None and down.op_type == "Cast" and to(down) == onnx.TensorProto.FLOAT16 \
                and node.output[0] not in outputs and _is_fp32(model, down.input[0], producer):
            rename[node.output[0]] = down.input[0]
    for node in model.graph.node:
        node.input[:] = [rename.get(x, x) for x in node.input]
    keep = [n for n in model.graph.node if not (n.output and n.output[0] in rename)]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    # Casts to FP16 that nobody reads any more are dropped too.
    used = {x for n in model.graph.node for x in n.input} | outputs
    keep = [n for n in model.graph.node if n.op_type != "Cast" or n.output[0] in used]
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _is_fp32(model: onnx.ModelProto, tensor: str, producer: dict) -> bool:
    node = producer.get(tensor)
    if node is None:
        return any(i.name == tensor and i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in model.graph.input)
    if node.op_type == "Cast":
        return next(a.i for a in node.attribute if a.name == "to") == onnx.TensorProto.FLOAT
    # A non-Cast producer feeding a Cast-to-FP16 is an FP32 island node (the converter only adds
    # that Cast after blocked nodes).
    return True


def _toposort(model: onnx.ModelProto) -> None:
    """The converter appends its Casts at the end; ONNX (and TensorRT's parser) want dataflow order."""
    ready = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    pending, ordered = list(model.graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(x in ready for x in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError(f"graph has a cycle or a dangling input at node {rest[0].name}")
        pending = rest
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def node_dtypes(model: onnx.ModelProto) -> dict[str, int]:
    """Output elem type of every node (after shape inference): used to check where FP32 stayed."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)}
    return {n.name: types.get(n.output[0], 0) for n in inferred.graph.node if n.output}
