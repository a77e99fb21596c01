"""What each node of an exported DiT graph is for, found from the graph's structure alone.

Node names depend on the exporter (TorchScript names `/blocks.0/attn/q/MatMul`, the dynamo exporter
`node_MatMul_34` after its optimiser renamed and deduplicated the weights), so precision decisions
are taken from dataflow instead, which every exporter preserves:

  * token path     nodes reachable from the token inputs (image x, hidden state h, velocity sum V:
                   the float inputs of rank >= 3). Everything else depends only on (t, dt_base, y, l)
                   or on hoisted modulation: that is the conditioning, kept FP32 and unquantised.
  * trunk adds     the residual stream: an Add that produces a LayerNorm input, or consumes a trunk
                   tensor, is a residual/accumulator sum (x + gate*attn, h + v, V + v).
  * block linears  MatMul/Gemm with a constant weight on the token path from which a trunk add is
                   reachable. The final layer's projection feeds no residual sum and the patch
                   embedder is a Conv, so neither is ever a block linear.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import onnx

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
# Ops whose inputs/outputs are data-movement only: a constant stays constant through them.
_SHAPE_OPS = {"Transpose", "Cast", "Reshape", "Identity", "Unsqueeze", "Squeeze", "Flatten"}
LINEAR_OPS = ("MatMul", "Gemm")
# LayerNorm as one op (opset >= 17) or decomposed (opset 16: ReduceMean/Pow/Sqrt chains).
NORM_OPS = ("LayerNormalization", "ReduceMean", "Pow", "Sqrt", "Reciprocal")


@dataclass(frozen=True)
class GraphRoles:
    token_inputs: tuple[str, ...]
    token_nodes: frozenset[str]          # node names on the token path
    conditioning_nodes: frozenset[str]   # every other node
    trunk_adds: frozenset[str]           # residual / velocity-accumulator sums
    block_linears: tuple[str, ...]       # quantisable MatMul/Gemm, in graph order
    weight_of: dict                      # block linear name -> its weight initializer name


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique name (quantisers address nodes by name). Mutates and returns."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    return model


def _rank(value_info: onnx.ValueInfoProto) -> int:
    return len(value_info.type.tensor_type.shape.dim)


def default_token_inputs(graph: onnx.GraphProto) -> tuple[str, ...]:
    """Float graph inputs of rank >= 3: images (B,C,H,W) and token states (B,N,D)."""
    init = {i.name for i in graph.initializer}
    return tuple(i.name for i in graph.input
                 if i.name not in init and i.type.tensor_type.elem_type in FLOAT_TYPES and _rank(i) >= 3)


def constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """Initializers, Constant outputs, and shape-op results of those (e.g. a transposed weight)."""
    const = {i.name for i in graph.initializer}
    for node in graph.node:  # nodes are topologically sorted in a valid ONNX graph
        if node.op_type == "Constant" or (
                node.op_type in _SHAPE_OPS and node.input and all(x in const for x in node.input if x)):
            const.update(node.output)
    return const


def _token_path(graph: onnx.GraphProto, seeds: tuple[str, ...]) -> set[str]:
    live, names = set(seeds), set()
    for node in graph.node:
        if any(x in live for x in node.input):
            live.update(node.output)
            names.add(node.name)
    return names


def _trunk_adds(graph: onnx.GraphProto) -> set[str]:
    trunk = {n.input[0] for n in graph.node if n.op_type == "LayerNormalization"}
    trunk |= {n.input[0] for n in graph.node if n.op_type == "ReduceMean" and _is_norm_mean(graph, n)}
    adds = [n for n in graph.node if n.op_type == "Add"]
    marked: set[str] = set()
    changed = True
    while changed:  # fixed point: a sum feeding a norm, or consuming a trunk tensor, is a trunk sum
        changed = False
        for node in adds:
            if node.name not in marked and (node.output[0] in trunk or any(x in trunk for x in node.input)):
                marked.add(node.name)
                trunk.add(node.output[0])
                changed = True
    return marked


def _is_norm_mean(graph: onnx.GraphProto, mean: onnx.NodeProto) -> bool:
    # A decomposed LayerNorm starts with ReduceMean(x) followed by Sub(x, mean).
    return any(n.op_type == "Sub" and mean.output[0] in n.input and mean.input[0] in n.input
               for n in graph.node)


def _reaches(graph: onnx.GraphProto, start: str, targets: set[str]) -> bool:
    consumers = defaultdict(list)
    for node in graph.node:
        for x in node.input:
            consumers[x].append(node)
    stack, seen = [start], set()
    while stack:
        tensor = stack.pop()
        for node in consumers.get(tensor, ()):
            if node.name in targets:
                return True
            if node.name not in seen:
                seen.add(node.name)
                stack.extend(node.output)
    return False


def _weight_input(node: onnx.NodeProto, const: set[str]) -> str | None:
    if len(node.input) >= 2 and node.input[1] in const and node.input[0] not in const:
        return node.input[1]
    return None


def analyse(model: onnx.ModelProto, token_inputs: tuple[str, ...] | None = None) -> GraphRoles:
    """Classify the nodes of `model` (nodes must be named: see name_nodes)."""
    graph = model.graph
    seeds = tuple(token_inputs) if token_inputs is not None else default_token_inputs(graph)
    token = _token_path(graph, seeds)
    trunk = _trunk_adds(graph) & token
    const = constant_tensors(graph)
    linears, weight_of = [], {}
    for node in graph.node:
        weight = _weight_input(node, const) if node.op_type in LINEAR_OPS else None
        if weight and node.name in token and _reaches(graph, node.output[0], trunk):
            linears.append(node.name)
            weight_of[node.name] = weight
    all_names = frozenset(n.name for n in graph.node)
    return GraphRoles(seeds, frozenset(token), all_names - token, frozenset(trunk), tuple(linears), weight_of)
