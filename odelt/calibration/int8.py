"""INT8 graphs: explicit symmetric Q/DQ on the blocks' linear layers, calibrated on recorded feeds.

Quantiser: onnxruntime.quantization.quantize_static in QDQ format. What it writes is what TensorRT's
strongly typed builder consumes (explicit quantisation; TRT 11 has no calibrators any more):
  * weights: signed INT8, symmetric (zero point 0), one scale per output channel
    (axis 1 of a MatMul's (K, N) weight, axis 0 of a Gemm's transposed (N, K) weight);
  * activations: signed INT8, symmetric, one scale per tensor, from the calibration ranges;
  * only the block linears (graph_roles) get Q/DQ. Attention BMMs, embedders, conditioning and the final
    layer stay FP32, as NVIDIA's INT8 diffusion recipes do.
The calibration ranges are cached in a JSON file so that the accuracy guard can re-quantise with fewer
layers without running calibration again.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnx

from odelt.calibration.graph_roles import analyse, name_nodes
from odelt.errors import ConfigError

CALIB_METHODS = ("minmax", "percentile", "entropy")


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


def int8_from_onnx(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]], *,
                   exclude: Sequence[str] = (), method: str = "minmax",
                   cache: Path | None = None) -> tuple[onnx.ModelProto, dict]:
    """FP32 graph + calibration feeds -> (Q/DQ graph, report). `exclude` are block linears the
    accuracy guard sent back to FP32; `cache` reuses calibration ranges between calls."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if not feeds and not (cache and cache.is_file()):
        raise ConfigError("INT8 calibration needs at least 1 sample, found 0")
    model = name_nodes(onnx.ModelProto.FromString(model.SerializeToString()))
    roles = analyse(model)
    nodes = [n for n in roles.block_linears if n not in set(exclude)]
    report = {"quantizer": "onnxruntime.quantization.quantize_static (QDQ)", "calibration": method,
              "int8_linears": nodes, "fallback_fp32": sorted(set(exclude) & set(roles.block_linears))}
    if not nodes:
        return model, report
    with tempfile.TemporaryDirectory(prefix="odelt-int8-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, src)
        quantize_static(
            src, dst, _as_reader(feeds) if feeds else None, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
            calibrate_method=_method(method), calibration_cache_path=cache,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                           "MatMulConstBOnly": True, "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],
                           "CalibMaxIntermediateOutputs": 64})
        out = onnx.load(dst)
    return out, report
