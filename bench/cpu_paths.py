"""The timed paths of bench group `cpu`: one velocity call per path, and each library's GEMM peak.

A path is `(library, precision, call)` with `call(x, t) -> velocity` (numpy in, numpy out; the shortcut
level and the labels are fixed when the path is made). Every library runs one thread:
ONNX Runtime through the project's session opener (intra-op threads 1, all graph optimisations),
OpenVINO through its own API on the same ONNX files (INFERENCE_NUM_THREADS 1, LATENCY hint; the
model reshaped to the static batch, as the engine it compiles is for one batch), PyTorch with
torch.set_num_threads(1). Heavy libraries are imported inside the functions that need them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

Call = Callable[[np.ndarray, np.ndarray], np.ndarray]
GEMM_N = 1024                      # the peak-probe GEMM: N x N times N x N, 2 N^3 flops


@dataclass(frozen=True)
class TimedPath:
    library: str                   # "ort" | "openvino" | "torch": whose GEMM peak it is compared with
    precision: str                 # "fp32" | "fp16" | "bf16" | "int8"
    call: Call
    info: dict = field(default_factory=dict)   # what the library made of the graph (figures)


# -- ONNX Runtime -----------------------------------------------------------------------------------
def ort_path(graph: Path, precision: str, extras: dict[str, np.ndarray]) -> TimedPath:
    from odelt.onnxrt import open_session

    session = open_session(graph, threads=1)
    types = {i.name: i.type for i in session.get_inputs()}   # an fp16 graph may take fp16 x / t

    def call(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        feeds = {"x": x, "t": t, **extras}
        feeds = {k: v.astype(np.float16) if types[k] == "tensor(float16)" else v for k, v in feeds.items()}
        return np.asarray(session.run(None, feeds)[0], np.float32)

    return TimedPath("ort", precision, call)


# -- OpenVINO ---------------------------------------------------------------------------------------
def ov_config(hint: str) -> dict:
    return {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}


def ov_path(graph: Path, precision: str, hint: str, extras: dict[str, np.ndarray], batch: int,
            shape: tuple[int, ...]) -> TimedPath:
    """`hint`: OpenVINO's inference precision for whatever the graph leaves in float (f32 | bf16 | f16);
    `precision` names the path (int8 for our Q/DQ graph, whose integer layers OpenVINO runs as INT8)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(graph))
    model.reshape({"x": ov.PartialShape([batch, *shape]), "t": ov.PartialShape([batch]),
                   "dt_base": ov.PartialShape([batch]), "y": ov.PartialShape([batch])})
    compiled = core.compile_model(model, "CPU", ov_config(hint))
    request = compiled.create_infer_request()

    def call(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        request.infer({"x": x, "t": t, **extras})
        return np.array(request.get_output_tensor(0).data, np.float32)

    return TimedPath("openvino", precision, call, {"products_by_precision": product_precisions(compiled)})


def product_precisions(compiled) -> str:
    """How many of the compiled model's products (FullyConnected, MatMul, Convolution) run at each
    precision, e.g. "f32:27 i8:48": whether OpenVINO really ran our Q/DQ layers as INT8."""
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) in ("FullyConnected", "MatMul", "Convolution"):
            key = rt["runtimePrecision"].astype(str)
            counts[key] = counts.get(key, 0) + 1
    return " ".join(f"{k}:{v}" for k, v in sorted(counts.items()))


# -- PyTorch ----------------------------------------------------------------------------------------
def torch_path(model, length: int, extras: dict[str, np.ndarray], bf16: bool, compiled: bool) -> TimedPath:
    """Eager or `torch.compile` (default inductor backend, static shapes), FP32 or under BF16 autocast
    (autocast entered inside the compiled function, so the compiled graph is the BF16 one)."""
    import torch

    dt_base, y = torch.from_numpy(extras["dt_base"]), torch.from_numpy(extras["y"])

    def forward(x, t):
        if bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x, t, dt_base, y, length)
        return model(x, t, dt_base, y, length)

    fn = torch.compile(forward, dynamic=False) if compiled else forward

    def call(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return fn(torch.from_numpy(x), torch.from_numpy(t)).float().numpy()

    return TimedPath("torch", "bf16" if bf16 else "fp32", call)


def forward_flops(model, length: int, extras: dict[str, np.ndarray], x: np.ndarray) -> int:
    """Flops of one forward (matmuls, convolutions, attention; PyTorch's own counter on the same model)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.from_numpy(x), torch.full((x.shape[0],), 0.5), torch.from_numpy(extras["dt_base"]),
              torch.from_numpy(extras["y"]), length)
    return int(counter.get_total_flops())


# -- each library's peak: one large GEMM per precision, timed the same way ---------------------------
def _gemm_graph(precision: str, zero_point: str = "int8"):
    """x (N, N) @ W (N, N), W a constant as in the model. int8: x quantised / dequantised (`zero_point`
    uint8 as the cpu flavour, int8 as the trt flavour) and W int8 dequantised, i.e. our Q/DQ pattern."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((GEMM_N, GEMM_N)).astype(np.float32) / GEMM_N ** 0.5
    fdt = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
    inits, nodes = [], []
    if precision == "int8":
        zp_np = np.uint8 if zero_point == "uint8" else np.int8
        inits += [numpy_helper.from_array(np.array(0.02, np.float32), "sx"),
                  numpy_helper.from_array(np.array(0 if zp_np is np.int8 else 128, zp_np), "zx"),
                  numpy_helper.from_array(np.array(0.01, np.float32), "sw"),
                  numpy_helper.from_array(np.array(0, np.int8), "zw"),
                  numpy_helper.from_array(np.clip(np.round(w / 0.01), -127, 127).astype(np.int8), "wq")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
                  helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["w"]),
                  helper.make_node("MatMul", ["xd", "w"], ["y"])]
    else:
        inits.append(numpy_helper.from_array(w.astype(np.float16 if precision == "fp16" else np.float32), "w"))
        nodes.append(helper.make_node("MatMul", ["x", "w"], ["y"]))
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", fdt, [GEMM_N, GEMM_N])],
                              [helper.make_tensor_value_info("y", fdt, [GEMM_N, GEMM_N])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def gemm_calls(precisions: dict[str, tuple[str, ...]], tmp: Path) -> dict[tuple[str, str], Callable[[], object]]:
    """{(library, precision): one call of the N x N GEMM (2 N^3 flops)}, one thread, to be timed beside
    the paths (so that load changes hit both). `precisions`: library -> the precisions its paths use
    (only those are probed). OpenVINO reads the graphs from files in `tmp`."""
    import onnx

    out: dict = {}
    x = np.random.default_rng(1).standard_normal((GEMM_N, GEMM_N)).astype(np.float32)
    for precision in precisions.get("ort", ()):
        from odelt.onnxrt import open_session

        session = open_session(_gemm_graph(precision, zero_point="uint8"), threads=1)  # u8 acts: ORT's fast kernel
        xi = x.astype(np.float16) if precision == "fp16" else x
        out["ort", precision] = lambda s=session, v=xi: s.run(None, {"x": v})
    for precision in precisions.get("openvino", ()):
        import openvino as ov

        path = tmp / f"gemm-{precision}.onnx"
        onnx.save(_gemm_graph("int8" if precision == "int8" else "fp32"), str(path))
        hint = {"fp32": "f32", "int8": "f32", "bf16": "bf16", "fp16": "f16"}[precision]
        request = ov.Core().compile_model(str(path), "CPU", ov_config(hint)).create_infer_request()
        out["openvino", precision] = lambda r=request: r.infer({"x": x})
    for precision in precisions.get("torch", ()):
        import torch

        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        a = torch.from_numpy(x).to(dtype)
        b = a.t().contiguous()

        def mm(a=a, b=b):
            with torch.inference_mode():
                return torch.mm(a, b)

        out["torch", precision] = mm
    for call in out.values():
        call()                                     # warm-up: prepacked weights, compiled kernels
    return out
