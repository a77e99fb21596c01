"""odelt-export: ODE_t(ODE_l) flow transformers to ONNX, ONNX Runtime and TensorRT."""

from odelt.errors import OdeltError

__all__ = ["OdeltError"]
__version__ = "0.1.0"
