"""The decoder stage at run time (numpy only): a bundle's decoder graph turns the sampler's latents
into images in about [-1, 1]; PNG grids clamp them to [-1, 1] (odelt.runtime.images.to_uint8).

Layout boundary: our graphs take NCHW latents (B, C, h, w), exactly as the DiT graphs return them,
and the VAE's 1/scaling_factor is inside the graph. Upstream's JAX code holds latents NHWC
(B, h, w, C) and divides by 0.18215 itself before its decode; such a latent enters here through
`latent_from_nhwc` (a transpose (0, 3, 1, 2), no scaling), and `image_to_nhwc` gives upstream's
(B, H, W, 3) image layout back.

`open_decoder(bundle, kind, ...)` opens one decoder with ONNX Runtime: the built ORT engine when an
engine set has one at the precision, else the precision variant's graph (every variant holds the
decoder: fp16 as fp16, int8 as fp16 or fp32, see odelt.calibration.quantize), else FP32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from odelt.errors import RuntimeFailure
from odelt.bundle.bundle import Bundle
from odelt.runtime.backends.protocol import decode_batches


def latent_from_nhwc(latent: np.ndarray, channels: int | None = None) -> np.ndarray:
    """Upstream's (B, h, w, C) latent -> the (B, C, h, w) our graphs take (values unchanged)."""
    x = np.asarray(latent)
    if x.ndim != 4 or (channels is not None and x.shape[-1] != channels):
        raise RuntimeFailure(f"expected an NHWC latent (B, h, w, {channels or 'C'}), found shape {x.shape}")
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def image_to_nhwc(image: np.ndarray) -> np.ndarray:
    """(B, C, H, W) -> upstream's (B, H, W, C)."""
    return np.ascontiguousarray(np.asarray(image).transpose(0, 2, 3, 1))


def _providers() -> tuple[str, ...]:
    from odelt.onnxrt import CPU, ort_module

    cuda = "CUDAExecutionProvider"
    return (cuda, *CPU) if cuda in ort_module().get_available_providers() else CPU


class OrtDecoder:
    """One decoder graph in one ONNX Runtime session; `decode` runs latents in chunks of `batch`."""

    backend = "ort"                          # the runtime that decodes (a profile records it)

    def __init__(self, manifest: Bundle, kind: str | None = None, precision: str = "fp32", threads: int = 0,
                 use_engines: bool = True):
        self.manifest, self.info = manifest, manifest.decoder(kind)
        self.kind, self.precision, self.threads = self.info.kind, precision, threads
        from odelt.runtime.backends.ort import graph_file

        self.path, self.engine = graph_file(manifest, self.info.graph, precision, use_engines)
        self.session: Any = None
        self.seconds = 0.0                   # time spent in decode calls

    def __enter__(self) -> OrtDecoder:
        from odelt.runtime.backends.ort import graph_session

        self.session = graph_session(self.manifest, self.path, self.engine, threads=self.threads, spinning=True,
                                     config=None, providers=_providers())
        return self

    def __exit__(self, *exc: object) -> None:
        self.session = None

    def decode(self, latents: np.ndarray, batch: int | None = None) -> np.ndarray:
        """(N, C, h, w) latents -> (N, C_img, H, W) float32 images (not clamped)."""
        if self.session is None:
            raise RuntimeFailure("decoder used outside its `with` block")
        return decode_batches(self, latents, batch, lambda chunk: self.session.run(["image"], {"latent": chunk})[0])


def open_decoder(manifest: Bundle, kind: str | None = None, precision: str = "fp32", threads: int = 0,
                 use_engines: bool = True, backend: str = "ort") -> Any:
    """The decoder of `kind` (default: the bundle's `decoder()`) in ONNX Runtime, to enter with
    `with`. The sampler's TensorRT backend decodes through it too (the CUDA provider when installed).
    backend "openvino": the OpenVINO set at `precision` when it holds the decoder graph (else ORT)."""
    if backend == "openvino" and use_engines:
        from odelt.runtime.backends.openvino import OvDecoder, engine_entry

        if engine_entry(manifest, precision, graph=manifest.decoder(kind).graph) is not None:
            return OvDecoder(manifest, kind, precision, threads)
    return OrtDecoder(manifest, kind, precision, threads, use_engines)
