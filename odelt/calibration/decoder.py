"""Precision of the decoder stage (latent bundles): which precision each variant keeps its decoder
graphs in, the FP16 decoder, and its accuracy against FP32.

  * fp16 variant: an FP16 decoder whose GroupNorm statistics (the exporter writes each GroupNorm as
    Reshape -> InstanceNormalization -> Reshape -> Mul -> Add; GroupNormalization at opset >= 18
    elsewhere; ReduceMean/Pow/Sqrt when decomposed) and the mid-block attention Softmax stay FP32:
    squaring activations of a few hundred overflows FP16 (the SD VAE's known failure), a softmax
    over 1024 tokens underflows. Convolutions, the attention projections and the upsampling are FP16.
  * int8 variant: no INT8 decoder (no INT8 decoder has been measured accurate; deployments quantise
    the denoiser only). The "trt" flavour (TensorRT engines) keeps the FP16 decoder, as TensorRT
    deployments of the SD VAE do; the "cpu" flavour (ONNX Runtime CPU) keeps the FP32 decoder,
    since FP16 convolutions gain nothing on CPU kernels.

Accuracy is measured like the DiT variants': the FP32 final samples of the guard's held-out noise
(real latents of this DiT) are decoded by the FP32 and the FP16 decoder and compared (RMSE, max
error, PSNR on the clamped [-1, 1] images). An FP16 decoder that misses the RMSE limit is not used:
the variant keeps the FP32 decoder and says so. The report also lists each node's largest
|activation| in the FP32 decoder on those latents, against FP16's largest finite value (65504).
"""

from __future__ import annotations

import numpy as np
import onnx

from odelt.calibration.fp16 import FP32_OPS, fp16_from_onnx
from odelt.bundle.bundle import Bundle

FP32_DECODER_OPS = (*FP32_OPS, "InstanceNormalization", "GroupNormalization")
FP16_MAX = 65504.0
DECODE_SAMPLES = 4                    # latents decoded for the accuracy check (a full SD decode: 6-10 s on CPU)
PROBE_SAMPLES = 2                     # latents the activation probe runs (one full decode per PROBE_OUTPUTS)
PROBE_OUTPUTS = 32                    # intermediate tensors recorded per probe run (bounds memory)
TOP_ACTIVATIONS = 12


def decoder_precision(precision: str, flavour: str | None) -> str:
    """The precision a variant keeps its decoder in: see the module docstring."""
    if precision == "fp16" or (precision == "int8" and flavour == "trt"):
        return "fp16"
    return "fp32"


def decoder_graphs(manifest: Bundle) -> list[str]:
    return [info.graph for info in manifest.decoders.values()]


def fp16_decoder(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """FP32 decoder graph -> (FP16 graph with FP32 normalisation and softmax, report)."""
    out, report = fp16_from_onnx(model, token_inputs=("latent",), fp32_ops=FP32_DECODER_OPS)
    kept = sorted(n.op_type for n in out.graph.node if n.op_type in FP32_DECODER_OPS)
    report = {"converter": report["converter"], "fp32_ops": list(FP32_DECODER_OPS),
              "fp32_nodes": {op: kept.count(op) for op in sorted(set(kept))}}
    return out, report


def _runs(model: onnx.ModelProto, latents: np.ndarray, outputs: list[str]):
    """Each latent alone (batch 1 bounds a full-size decode's memory): yields that run's outputs."""
    from odelt.onnxrt import open_session

    session = open_session(model, threads=0)
    for i in range(len(latents)):
        yield session.run(outputs, {"latent": latents[i:i + 1]})


def _images(model: onnx.ModelProto, latents: np.ndarray) -> np.ndarray:
    return np.concatenate([r[0] for r in _runs(model, latents, ["image"])])


def activation_maxima(model: onnx.ModelProto, latents: np.ndarray) -> dict[str, float]:
    """{node name: max |output|} of every float activation (rank >= 2: not the scalars of shape
    arithmetic, such as the attention's channel count), PROBE_OUTPUTS tensors per run."""
    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {v.name for v in (*inferred.graph.value_info, *inferred.graph.output)
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and len(v.type.tensor_type.shape.dim) >= 2}
    producer = {n.output[0]: n.name for n in model.graph.node
                if n.output and n.output[0] in floats and n.op_type not in ("Constant", "ConstantOfShape")}
    tensors = list(producer)
    out: dict[str, float] = {}
    for start in range(0, len(tensors), PROBE_OUTPUTS):
        part = tensors[start:start + PROBE_OUTPUTS]
        probe = onnx.ModelProto.FromString(model.SerializeToString())
        known = {o.name for o in probe.graph.output}
        probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in part if t not in known)
        for values in _runs(probe, latents, part):
            for t, v in zip(part, values):
                peak = float(np.abs(v).max()) if np.size(v) else 0.0
                out[producer[t]] = max(out.get(producer[t], 0.0), peak)
    return out


def decoder_accuracy(fp32: onnx.ModelProto, fp16: onnx.ModelProto, latents: np.ndarray) -> dict:
    """FP16 against FP32 on the same latents (images compared raw and clamped to [-1, 1])."""
    return image_accuracy(_images(fp32, latents), _images(fp16, latents))


def fp32_images(model: onnx.ModelProto, latents: np.ndarray) -> np.ndarray:
    """The FP32 decoder graph's images of `latents` (ONNX Runtime, CPU): the reference every
    reduced-precision decoder is held to."""
    return _images(model, latents)


def image_accuracy(ref: np.ndarray, got: np.ndarray) -> dict:
    """A decoder's images against the FP32 decoder's of the same latents (raw and clamped to [-1, 1])."""
    diff = got.astype(np.float64) - ref
    clamped = np.clip(got, -1, 1).astype(np.float64) - np.clip(ref, -1, 1)
    mse = float(np.mean(clamped ** 2))
    return {"rmse": float(np.sqrt(np.mean(diff ** 2))), "max_abs_err": float(np.abs(diff).max()),
            "psnr_db": float("inf") if mse == 0 else float(10 * np.log10(4.0 / mse)),  # peak-to-peak 2
            "finite": bool(np.isfinite(got).all()), "samples": int(len(ref)),
            "image_absmax_fp32": float(np.abs(ref).max())}


def activation_report(maxima: dict[str, float]) -> dict:
    top = sorted(maxima.items(), key=lambda kv: kv[1], reverse=True)
    peak = top[0][1] if top else 0.0
    return {"max": peak, "fp16_headroom": FP16_MAX / peak if peak else float("inf"),
            "over_fp16": [n for n, v in top if v > FP16_MAX], "nodes": len(maxima),
            "top": [{"node": n, "max_abs": round(v, 4)} for n, v in top[:TOP_ACTIVATIONS]]}


def spread(latents: np.ndarray, k: int) -> np.ndarray:
    """k latents spread over the pooled runs (schedules and lengths), not just the first run's."""
    idx = np.unique(np.linspace(0, len(latents) - 1, min(k, len(latents))).round().astype(int))
    return np.ascontiguousarray(latents[idx], dtype=np.float32)


def build_decoders(manifest: Bundle, precision: str, flavour: str | None, latents: np.ndarray,
                   max_rmse: float) -> tuple[dict[str, onnx.ModelProto], dict]:
    """The variant's decoder graphs: {graph: FP16 model} for those it changes, and the report
    {graph: {"precision", "accuracy", "activations", ...}}. `latents` are FP32 final samples."""
    want = decoder_precision(precision, flavour)
    changed, report = {}, {}
    for name in decoder_graphs(manifest):
        model = onnx.load(str(manifest.graph_path(name)))
        x = spread(latents, DECODE_SAMPLES)
        entry: dict = {"precision": "fp32", "wanted": want,
                       "activations": {**activation_report(activation_maxima(model, x[:PROBE_SAMPLES])),
                                       "samples": len(x[:PROBE_SAMPLES])}}
        if want == "fp16":
            half, conv = fp16_decoder(model)
            acc = decoder_accuracy(model, half, x)
            ok = acc["finite"] and acc["rmse"] <= max_rmse
            entry.update({"accuracy": acc, "limit_rmse": max_rmse, "conversion": conv,
                          "precision": "fp16" if ok else "fp32"})
            if ok:
                changed[name] = half
            else:
                entry["note"] = (f"FP16 decoder missed the limit (RMSE {acc['rmse']:.3g} > {max_rmse:g} or "
                                 "non-finite): the variant keeps the FP32 decoder")
        report[name] = entry
    return changed, report
