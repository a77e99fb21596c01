"""The decoder stage's export: `onnx_from_vae` (a diffusers VAE -> one ONNX decoder graph, the DiT's
NCHW latent in, an image in about [-1, 1] out), `export_decoders` (the graphs + manifest entries of
a bundle's `--vae` options) and `compare_decoder` (ONNX Runtime against diffusers' own decode).

Scale: the DiT's latents are the VAE's latents times its scaling_factor (0.18215 for the SD VAE),
and diffusers' decode expects them divided back. The graph does that division itself, folded into
the weights of the 1x1 `post_quant_conv` (W/s, bias unchanged: conv(z/s) = (W/s) z + b), so it
costs nothing at run time and no host divides; the manifest records the factor as already folded.
TAESD's factor is 1, and diffusers' DecoderTiny already maps its [0, 1] output to [-1, 1].

Layout: the graphs take NCHW latents, as the DiT graphs produce them; the NHWC boundary to
upstream's JAX code is documented (and crossed) in odelt.runtime.backends.decoder.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from odelt.errors import ConfigError
from odelt.bundle.iospec import GraphSpec, decoder_spec
from odelt.exporter.trace import EXTERNAL_DATA_BYTES, TRACE_BATCH, onnx_from_model
from odelt.latent.vae import Vae, check_fits, load_vae, parse_vae_options
from odelt.models.config import DiTConfig



def folded_conv(conv: nn.Conv2d, factor: float) -> nn.Conv2d:
    """A copy of `conv` computing conv(factor * x): its weight times `factor` (in float64, then
    rounded once to float32), the bias as is."""
    out = copy.deepcopy(conv)
    with torch.no_grad():
        out.weight.copy_((conv.weight.double() * factor).to(conv.weight.dtype))
    return out


class DecoderGraph(nn.Module):
    """latent (B, C, h, w), as the DiT produces it -> image (B, C_img, H, W) in about [-1, 1]."""

    def __init__(self, vae: Vae):
        super().__init__()
        model, inv = vae.model, 1.0 / vae.scaling_factor
        self.entry: Any = None
        self.decoder = model.decoder
        if vae.kind == "sd":
            if model.post_quant_conv is not None:
                self.entry = folded_conv(model.post_quant_conv, inv)
            else:                     # no post_quant_conv: the decoder's conv_in is the first linear map
                self.decoder = copy.copy(model.decoder)
                self.decoder._modules = dict(model.decoder._modules)
                self.decoder.conv_in = folded_conv(model.decoder.conv_in, inv)

    def forward(self, latent: Tensor) -> Tensor:
        z = self.entry(latent) if self.entry is not None else latent
        return self.decoder(z)


def decoder_spec_for(vae: Vae, cfg: DiTConfig) -> GraphSpec:
    side = cfg.input_size
    return decoder_spec(vae.kind, (cfg.out_channels, side, side),
                        (vae.image_channels, side * vae.upscale, side * vae.upscale))


def random_latent(spec: GraphSpec, batch: int, seed: int = 0) -> np.ndarray:
    """Standard-normal latents: the DiT's (scaled) latent space has about unit variance."""
    return np.random.default_rng(seed).standard_normal(spec.inputs[0].resolve(batch)).astype(np.float32)


def onnx_from_vae(vae: Vae, spec: GraphSpec, opset: int, scratch: Path | None = None):
    """Trace `DecoderGraph(vae)` into a checked ONNX ModelProto with `spec`'s IO (dynamic batch)."""

    feed = {"latent": random_latent(spec, TRACE_BATCH)}
    return onnx_from_model(DecoderGraph(vae).eval(), spec, feed, opset, scratch)


def load_decoders(options: tuple[tuple[str, str], ...], cfg: DiTConfig) -> list[Vae]:
    """Each `--vae KIND:PATH`, loaded and checked against the DiT (before anything is written)."""
    parse_vae_options(tuple(f"{k}:{path}" for k, path in options))     # known kinds, each at most once
    vaes = [load_vae(k, path) for k, path in options]
    for vae in vaes:
        check_fits(vae, cfg)
    # a budgeted stream may switch decoders between batches and returns one array of images
    shapes = {vae.kind: decoder_spec_for(vae, cfg).outputs[0].shape[1:] for vae in vaes}
    if len(set(shapes.values())) > 1:
        (a, sa), (b, sb) = list(shapes.items())[:2]
        raise ConfigError(f"--vae: {b} decodes to {sb} images, {a} to {sa}; expected every decoder of a bundle "
                          "to make the same image shape")
    return vaes


def decoder_entry(vae: Vae, spec: GraphSpec) -> dict:
    """The manifest's `decoders[kind]` entry (see odelt.bundle.bundle)."""
    return {"kind": vae.kind, "graph": spec.name, "scaling_factor": vae.scaling_factor, "scale_folded": True,
            "latent": list(spec.inputs[0].shape[1:]), "image": list(spec.outputs[0].shape[1:]),
            "params": vae.decode_params, "source": vae.source, "source_hash": vae.source_hash,
            "weights": str(vae.weights), "spelling": vae.spelling, "config": vae.config}


def export_decoders(vaes: list[Vae], cfg: DiTConfig, root: Path, opset: int,
                    external: bool | None) -> tuple[dict, dict]:
    """Write each VAE's decoder graph under `root`; returns (graph entries, decoders entries)."""
    from odelt.exporter import onnx_utils

    graphs, decoders = {}, {}
    for vae in vaes:
        spec = decoder_spec_for(vae, cfg)
        model = onnx_from_vae(vae, spec, opset)
        weight_bytes = onnx_utils.weight_bytes(model)
        ext = weight_bytes > EXTERNAL_DATA_BYTES if external is None else external
        data = onnx_utils.save_graph(model, root / spec.file, ext)
        graphs[spec.name] = {**spec.to_dict(), "external_data": data, "weight_bytes": weight_bytes}
        decoders[vae.kind] = decoder_entry(vae, spec)
    return graphs, decoders


def vae_for_bundle(manifest, kind: str) -> Vae:
    """The VAE a bundle's decoder was exported from; its weights and config must hash as recorded."""
    from odelt.errors import BundleError

    entry = manifest.decoder(kind)
    vae = load_vae(kind, entry.source)
    if entry.source_hash and vae.source_hash != entry.source_hash:
        raise BundleError(f"--vae {kind}: {entry.source} has hash {vae.source_hash}, but the bundle's decoder was "
                          f"exported from hash {entry.source_hash}")
    return vae


def compare_decoder(session, vae: Vae, spec: GraphSpec, batch_sizes: tuple[int, ...], seed: int = 0) -> float:
    """Max |ONNX Runtime - diffusers decode(z / scaling_factor)| over one random latent per batch size."""
    worst = 0.0
    for i, b in enumerate(batch_sizes):
        z = random_latent(spec, b, seed + i)
        (got,) = session.run(["image"], {"latent": z})
        want = vae.decode(torch.from_numpy(z)).numpy()
        worst = max(worst, float(np.abs(got - want).max()))
    return worst
