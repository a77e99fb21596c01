"""Engines built ahead of time from a bundle's graphs: ONNX Runtime graphs optimised offline (ort.py)
and TensorRT plans (tensorrt.py), with build targets as data (targets.py), the platform record that
ties an engine to the library and device that built it (platform.py), and `build_bundle`, which
builds a whole engine set and records it in the bundle (build.py)."""
