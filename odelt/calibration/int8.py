"""INT8 graphs: explicit Q/DQ on the blocks' linear layers, calibrated on recorded feeds.

Quantiser: onnxruntime.quantization.quantize_static in QDQ format, per-channel weights, per-tensor
activations, only on the block linears (graph_roles): attention BMMs, embedders, conditioning and the
final layer stay FP32, as NVIDIA's INT8 diffusion recipes do.

Two flavours, because the two consumers of a Q/DQ graph want different activation types:

  * ``trt`` (default): signed INT8 symmetric activations (zero point 0) and signed symmetric 8-bit
    weights. This is what TensorRT's strongly typed builder consumes (explicit quantisation; TRT 11
    has no calibrators, and its Q/DQ layers take INT8 with zero point 0 only).
  * ``cpu``: unsigned 8-bit asymmetric activations (uint8, a zero point per tensor) and signed
    symmetric 7-bit weights (reduce_range). ONNX Runtime's x86 CPU provider fuses DQ -> MatMul into
    MatMulIntegerToFloat (MLAS U8S8 kernels) for every block linear only when the activations are
    uint8: with signed activations it fuses just the matmuls whose quantised input has one reader
    (attention proj, fc1, fc2) and leaves q/k/v as DequantizeLinear + FP32 MatMul, so the trt
    flavour runs slower than FP32 on CPU. The 7-bit weights are needed on CPUs without VNNI (AVX2):
    MLAS multiplies u8 x s8 pairs with vpmaddubsw, whose int16 pair sums saturate for 8-bit weights
    (255*127*2 > 32767); measured here, 8-bit weights gave 0.38 relative error on a DiT-S/2 chunk
    against 0.02 with 7-bit. TensorRT cannot build this flavour (uint8 / non-zero zero points).

A bundle holds one ``int8`` variant; the manifest's precisions entry and the report record its
flavour (variants.int8_flavour), so every consumer keeps looking graphs up by the precision "int8".
The calibration ranges are cached in a JSON file so that the accuracy guard can re-quantise with
fewer layers without running calibration again.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnx

from odelt.calibration.graph_roles import analyse, name_nodes
from odelt.calibration import CALIB_METHODS, INT8_FLAVOURS
from odelt.errors import ConfigError
from odelt.fileio import writing



@dataclass(frozen=True)
class Int8Flavour:
    name: str
    target: str                  # who runs it fast
    activations_signed: bool     # int8 symmetric (True) or uint8 asymmetric (False)
    weight_bits: int             # 8, or 7 (reduce_range) for U8S8 kernels without VNNI

    def describe(self) -> str:
        act = "int8 symmetric" if self.activations_signed else "uint8 asymmetric"
        return (f"{self.name}: activations {act} per tensor, weights int8 symmetric per channel "
                f"({self.weight_bits}-bit range), for {self.target}")


FLAVOURS = {
    "trt": Int8Flavour("trt", "TensorRT (strongly typed, explicit quantisation)", True, 8),
    "cpu": Int8Flavour("cpu", "ONNX Runtime CPU (MatMulIntegerToFloat fusion)", False, 7),
}
DEFAULT_FLAVOUR = "trt"
assert tuple(FLAVOURS) == INT8_FLAVOURS


def get_flavour(name: str) -> Int8Flavour:
    if name not in FLAVOURS:
        raise ConfigError(f"unknown INT8 flavour {name!r}; expected one of {list(FLAVOURS)}")
    return FLAVOURS[name]


class FeedReader:
    """A CalibrationDataReader over a list of recorded feed dicts (one per network evaluation)."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]):
        self._feeds = list(feeds)
        self._it: Iterable = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)  # type: ignore[call-overload]

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def _as_reader(feeds: Sequence[dict[str, np.ndarray]]):
    # quantize_static checks isinstance(reader, CalibrationDataReader) in some versions: subclass lazily.
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(FeedReader, CalibrationDataReader):
        pass

    return _Reader(feeds)


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
             "entropy": CalibrationMethod.Entropy}
    if name not in table:
        raise ConfigError(f"unknown calibration method {name!r}; expected one of {list(CALIB_METHODS)}")
    return table[name]


def _quantizer_args(flavour: Int8Flavour) -> dict:
    from onnxruntime.quantization import QuantType

    return dict(activation_type=QuantType.QInt8 if flavour.activations_signed else QuantType.QUInt8,
                weight_type=QuantType.QInt8, reduce_range=flavour.weight_bits < 8,
                extra_options={"ActivationSymmetric": flavour.activations_signed, "WeightSymmetric": True,
                               "MatMulConstBOnly": True,
                               "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],
                               "CalibMaxIntermediateOutputs": 64})


def int8_from_onnx(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]], *,
                   exclude: Sequence[str] = (), method: str = "minmax", cache: Path | None = None,
                   flavour: str = DEFAULT_FLAVOUR) -> tuple[onnx.ModelProto, dict]:
    """FP32 graph + calibration feeds -> (Q/DQ graph, report). `exclude` are block linears the
    accuracy guard sent back to FP32; `cache` reuses calibration ranges between calls (the ranges do
    not depend on the flavour)."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    flav = get_flavour(flavour)
    if not feeds and not (cache and cache.is_file()):
        raise ConfigError("INT8 calibration needs at least 1 sample, found 0")
    model = name_nodes(onnx.ModelProto.FromString(model.SerializeToString()))
    roles = analyse(model)
    nodes = [n for n in roles.block_linears if n not in set(exclude)]
    report = {"quantizer": "onnxruntime.quantization.quantize_static (QDQ)", "calibration": method,
              "flavour": flav.name, "flavour_description": flav.describe(),
              "int8_linears": nodes, "fallback_fp32": sorted(set(exclude) & set(roles.block_linears))}
    if not nodes:
        return model, report
    with tempfile.TemporaryDirectory(prefix="odelt-int8-") as tmp, writing(tmp):   # scratch: a full disk is one line
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, src)
        with _DropPreprocessAdvice():
            quantize_static(
                src, dst, _as_reader(feeds) if feeds else None, quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["MatMul", "Gemm"], per_channel=True, nodes_to_quantize=nodes,
                calibrate_method=_method(method), calibration_cache_path=cache, **_quantizer_args(flav))
        out = onnx.load(dst)
    return unquantised_readers_to_fp32(out, nodes), report


class _DropPreprocessAdvice(logging.Filter):
    """While in use, drops the advice quantize_static logs on the root logger, twice per call, to run
    its pre-processing (shape inference + graph optimisation). We name the nodes to quantise on the
    exported graph itself, so it does not apply; it buried the progress lines of quantize and demo."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    def __enter__(self) -> _DropPreprocessAdvice:
        logging.getLogger().addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeFilter(self)


def unquantised_readers_to_fp32(model: onnx.ModelProto, quantised: Sequence[str]) -> onnx.ModelProto:
    """Every reader of a dequantised activation that is not one of the `quantised` nodes reads the
    FP32 tensor before its QuantizeLinear instead. The quantiser rewires every reader of a quantised
    tensor, so (1) a block linear the guard sent back to FP32 would still see INT8-rounded input when
    it shares that input with a quantised one (k and v beside q), and (2) ORT would keep a
    DequantizeLinear of the whole activation only so that a Shape op (the exporter reads x.shape for
    the q/k/v reshapes) can read its shape. DequantizeLinear nodes left without readers are removed."""
    graph, keep = model.graph, set(quantised)
    quantised_from = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    source = {n.output[0]: quantised_from[n.input[0]] for n in graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] in quantised_from}
    for node in graph.node:
        if node.name not in keep:
            for i, x in enumerate(node.input):
                if x in source:
                    node.input[i] = source[x]
    read = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] in source
                 and n.output[0] not in read]:
        graph.node.remove(node)
    read = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == "QuantizeLinear" and n.output[0] not in read]:
        graph.node.remove(node)
    return model


def fused_ops(model: onnx.ModelProto | str | Path, threads: int = 1) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime's CPU provider actually runs (all optimisations on),
    read back from SessionOptions.optimized_model_filepath. Shows whether Q/DQ pairs became
    MatMulIntegerToFloat or stayed DequantizeLinear + FP32 MatMul."""
    from odelt.onnxrt import open_session

    with tempfile.TemporaryDirectory(prefix="odelt-ortopt-") as tmp:
        path = Path(tmp) / "optimised.onnx"
        # log level 3: the "hardware specific optimizations" warning is expected here
        open_session(model, threads=threads, optimized_path=path, log_level=3)
        optimised = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in optimised.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
