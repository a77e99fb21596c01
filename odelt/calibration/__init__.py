"""Precision variants of a bundle: FP16 (fp16.py) and INT8 with explicit Q/DQ (int8.py), calibrated
on real ODE trajectories (trajectories.py) and guarded by final-sample accuracy (metrics.py), with
layers that break the limit ranked (sensitivity.py) and sent back to FP32; quantize.py runs the
stages and records the variant in the bundle."""

from odelt.lazy import face

# Names the CLI offers, kept here so that parsing options does not import onnx (int8.py checks them).
CALIB_METHODS = ("minmax", "percentile", "entropy")
INT8_FLAVOURS = ("trt", "cpu")
QUANTIZED_PRECISIONS = ("fp16", "int8")

__all__, __getattr__, __dir__ = face(__name__, {
    "odelt.calibration.quantize": ("QuantizeOptions", "quantize_bundle", "load_report", "DEFAULT_SCHEDULES",
                                   "MAX_RMSE"),
    "odelt.calibration.trajectories": ("OrtGraphs", "Recorder", "Noise", "trajectories", "record_feeds"),
    "odelt.calibration.graph_roles": ("GraphRoles", "analyse", "name_nodes"),
    "odelt.calibration.int8": ("int8_from_onnx", "fused_ops"),
    "odelt.calibration.fp16": ("fp16_from_onnx",),
    "odelt.calibration.decoder": ("fp16_decoder", "decoder_accuracy", "build_decoders"),
}, eager=("CALIB_METHODS", "INT8_FLAVOURS", "QUANTIZED_PRECISIONS"))
