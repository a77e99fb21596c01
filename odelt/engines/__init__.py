"""Engines built ahead of time from a bundle's graphs: ONNX Runtime graphs optimised offline (ort.py),
OpenVINO compiled models (openvino.py), TensorRT and TensorRT-RTX plans from one builder (tensorrt.py, with what differs between the
libraries in trt_caps.py; TensorRT-RTX records, checks and sets in rtx.py and rtx_build.py), build
targets as data (targets.py, rtx_targets.py), the platform record that ties a TensorRT engine to the
library and device that built it (platform.py), and `build_bundle`, which builds a whole engine set
and records it in the bundle (build.py)."""

from odelt.lazy import face

__all__, __getattr__, __dir__ = face(__name__, {
    "odelt.engines.build": ("BuildRequest", "build_bundle", "describe", "BUILD_PRECISIONS"),
    "odelt.engines.ort": ("OrtEngineOptions", "engine_from_onnx", "session_from_engine", "measure_startup"),
    "odelt.engines.openvino": ("cpu_isa", "measure_load", "ov_version", "NATIVE_ISA", "native_precisions"),
    "odelt.engines.targets": ("TARGETS",),
    "odelt.engines.rtx_targets": ("RTX_TARGETS",),
})
