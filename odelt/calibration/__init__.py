"""Precision variants of a bundle: FP16 (fp16.py) and INT8 with explicit Q/DQ (int8.py), calibrated
on real ODE trajectories (trajectories.py) and guarded by final-sample accuracy (metrics.py), with
layers that break the limit ranked (sensitivity.py) and sent back to FP32; quantize.py runs the
stages and records the variant in the bundle."""

# Names the CLI offers, kept here so that parsing options does not import onnx (int8.py checks them).
CALIB_METHODS = ("minmax", "percentile", "entropy")
INT8_FLAVOURS = ("trt", "cpu")
QUANTIZED_PRECISIONS = ("fp16", "int8")
