"""Verification of a bundle against PyTorch: onnx.checker (full) on every graph, then every length of
every layout through ONNX Runtime (CPU) and through the PyTorch model on the same random inputs,
compared with Polygraphy's Comparator. Weight bytes are recounted from the files, not trusted."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from odelt import validate
from odelt.errors import BundleError, ExportError
from odelt.exporter import onnx_utils
from odelt.bundle.bundle import Bundle, open_bundle
from odelt.bundle.chain import run_chain
from odelt.bundle.iospec import BatchRange, TensorSpec, caller_inputs
from odelt.fileio import file_hash
from odelt.models.checkpoint import load_checkpoint, resolve_source
from odelt.models.dit import DiT

FP32_ATOL = 1e-4


@dataclass(frozen=True)
class VerifyOptions:
    atol: float = FP32_ATOL
    cases: int = 3                              # random input sets per batch size
    batch_sizes: tuple[int, ...] | None = None  # None: batch.min and a larger size
    seed: int = 0
    source: str | None = None                   # None: the source recorded in the manifest

    def __post_init__(self) -> None:
        validate.positive("--atol", self.atol)
        validate.count("--cases", self.cases)
        validate.count("--seed", self.seed, 0)
        if self.batch_sizes is not None:
            validate.counts("batch sizes", self.batch_sizes)


def default_batch_sizes(batch: BatchRange) -> tuple[int, ...]:
    """Two sizes: the smallest, and a larger one (capped at min+2 to keep CPU runs short)."""
    return (batch.min, min(batch.max, batch.min + 2) if batch.max > batch.min else batch.min + 1)


def model_for_bundle(manifest: Bundle, source: str | None = None) -> DiT:
    """The PyTorch model the bundle was exported from; its file hash must match the manifest's."""
    src = source or manifest.source
    if not src:
        raise BundleError(f"{manifest.root}: the manifest records no source model; pass --source")
    want = manifest.model_hash
    have = file_hash(resolve_source(src))
    if want and have != want:
        raise BundleError(f"source {src} has hash {have}, but the bundle was exported from hash {want}")
    return load_checkpoint(src, manifest.config)


def random_step_inputs(manifest: Bundle, batch: int, rng: np.random.Generator, case: int) -> dict[str, np.ndarray]:
    """Caller inputs: random x, t spread over [0, 1] (case 0 hits t = 0 and 1), every dt_base level,
    labels including the null class, guidance scales in [1, 4]."""
    cfg = manifest.config
    t = rng.uniform(0.0, 1.0, batch).astype(np.float32)
    if case == 0:
        t[0], t[-1] = 0.0, 1.0
    feed = {"x": rng.standard_normal((batch, cfg.in_channels, cfg.input_size, cfg.input_size)).astype(np.float32),
            "t": t, "dt_base": rng.integers(0, 8, batch).astype(np.int32),
            "y": rng.integers(0, cfg.num_classes + 1, batch).astype(np.int32)}
    if manifest.guidance:
        feed["cfg_scale"] = rng.uniform(1.0, 4.0, batch).astype(np.float32)
    return feed


def _metadata(tensors: list[TensorSpec]):
    from polygraphy.common import TensorMetadata

    meta = TensorMetadata()
    for t in tensors:
        meta.add(t.name, dtype=np.dtype(t.dtype), shape=[None if isinstance(d, str) else d for d in t.shape])
    return meta


def _runner_classes():
    """Polygraphy runner subclasses, built lazily so importing this module stays light."""
    from polygraphy.backend.base import BaseRunner
    from polygraphy.backend.onnxrt import OnnxrtRunner

    class ChainRunner(BaseRunner):
        """Runs one length's chain of graphs with one OnnxrtRunner per graph."""

        def __init__(self, manifest: Bundle, layout: str, length: int, sessions: dict):
            super().__init__(name=f"onnxrt-{layout}-l{length}")
            self.manifest, self.layout, self.length, self.sessions = manifest, layout, length, sessions

        def activate_impl(self):
            chain = self.manifest.chain(self.length, self.layout)
            self.runners = {g.name: OnnxrtRunner(self.sessions[g.name]) for g in chain}
            for r in self.runners.values():
                r.activate()

        def get_input_metadata_impl(self):
            return _metadata(caller_inputs(self.manifest.config, self.manifest.guidance))

        def infer_impl(self, feed_dict):
            run = lambda g, f: self.runners[g.name].infer(f, check_inputs=False)  # noqa: E731
            start = time.perf_counter()
            out = OrderedDict(velocity=run_chain(self.manifest, self.length, feed_dict, run, self.layout))
            self.inference_time = time.perf_counter() - start
            return out

        def deactivate_impl(self):
            for r in self.runners.values():
                r.deactivate()

    class TorchRunner(BaseRunner):
        """PyTorch reference (CPU): DiT.forward, CFG as two calls."""

        def __init__(self, dit: DiT, manifest: Bundle, length: int):
            super().__init__(name=f"pytorch-l{length}")
            self.dit, self.manifest, self.length = dit, manifest, length

        def activate_impl(self):
            pass

        def get_input_metadata_impl(self):
            return _metadata(caller_inputs(self.manifest.config, self.manifest.guidance))

        def infer_impl(self, feed_dict):
            import torch

            from odelt.exporter.wrappers import reference_velocity

            args = [torch.from_numpy(np.asarray(feed_dict[k])) for k in ("x", "t", "dt_base", "y")]
            scale = torch.from_numpy(feed_dict["cfg_scale"]) if "cfg_scale" in feed_dict else None
            start = time.perf_counter()
            out = OrderedDict(velocity=reference_velocity(self.dit, *args, self.length, scale).numpy())
            self.inference_time = time.perf_counter() - start
            return out

        def deactivate_impl(self):
            pass

    return ChainRunner, TorchRunner


def cpu_session(path):
    """An ONNX Runtime CPU session with ONNX Runtime's own thread count (verification is not timed)
    and sleeping idle threads: chains run many small graphs back to back, beside PyTorch."""
    from odelt.onnxrt import open_session

    return open_session(path, threads=0)


def check_graphs(manifest: Bundle) -> list[str]:
    import onnx

    for name in manifest.graphs:
        try:
            onnx.checker.check_model(str(manifest.graph_path(name)), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise ExportError(f"graph {name} fails onnx.checker: {str(e).splitlines()[0]}") from None
    return sorted(manifest.graphs)


def recount_weight_bytes(manifest: Bundle) -> dict[str, int]:
    """Weight bytes per layout from the ONNX files themselves (+ segments without conditioning)."""
    import onnx

    per_graph = {name: onnx_utils.weight_bytes(onnx.load(str(manifest.graph_path(name)), load_external_data=False))
                 for name in manifest.graphs}
    out = {}
    for layout in manifest.layouts:
        out[layout] = sum(b for name, b in per_graph.items() if manifest.graph(name).layout == layout)
    if "segments" in out:
        out["segments_without_conditioning"] = out["segments"] - per_graph["cond"]
    return out


def duplicate_initializers(manifest: Bundle, layout: str = "segments") -> int:
    """Initializers (>= 1 KiB) whose bytes appear in more than one graph of `layout`."""
    seen: dict[str, str] = {}
    dups = 0
    for name, g in manifest.graphs.items():
        if g.layout != layout:
            continue
        for digest in onnx_utils.initializer_digests(manifest.graph_path(name)):
            dups += digest in seen
            seen[digest] = name
    return dups


def compare_length(manifest: Bundle, dit: DiT, layout: str, length: int, sessions: dict,
                   options: VerifyOptions) -> float:
    """Max |ORT - PyTorch| over all cases and batch sizes for one layout and length."""
    from polygraphy.comparator import Comparator

    chain_cls, torch_cls = _runner_classes()
    rng = np.random.default_rng([options.seed, length])
    sizes = options.batch_sizes or default_batch_sizes(manifest.batch)
    feeds = [random_step_inputs(manifest, b, rng, case) for b in sizes for case in range(options.cases)]
    results = Comparator.run([chain_cls(manifest, layout, length, sessions), torch_cls(dit, manifest, length)],
                             data_loader=feeds)
    onnx_out, torch_out = (iters for _, iters in results.items())
    return max(float(np.abs(a["velocity"] - b["velocity"]).max()) for a, b in zip(onnx_out, torch_out))


def verify_decoders(manifest: Bundle, sessions: dict, options: VerifyOptions) -> dict[str, float]:
    """{kind: max |ORT - diffusers decode(z / scaling_factor)|}: one random latent per batch size
    (a full-size decode takes seconds), against the VAE reloaded from its recorded source."""
    if not manifest.decoders:
        return {}
    from odelt.exporter.decoder import compare_decoder, vae_for_bundle

    sizes = options.batch_sizes or default_batch_sizes(manifest.batch)
    out = {}
    for kind, info in manifest.decoders.items():
        out[kind] = compare_decoder(sessions[info.graph], vae_for_bundle(manifest, kind), manifest.graph(info.graph),
                                    tuple(sizes), options.seed)
    return out


def verify_bundle(bundle, options: VerifyOptions = VerifyOptions()) -> dict:
    """Check and compare a bundle; returns the report (see `odelt-export verify --json`)."""
    from polygraphy.logger import G_LOGGER
    from tqdm import tqdm

    G_LOGGER.module_severity = G_LOGGER.ERROR
    manifest = open_bundle(bundle, verify=True)
    dit = model_for_bundle(manifest, options.source)
    checked = check_graphs(manifest)
    sessions = {name: cpu_session(manifest.graph_path(name)) for name in checked}
    per_length: dict[str, dict[str, float]] = {}
    jobs = [(layout, n) for layout in manifest.layouts for n in manifest.lengths]
    for layout, n in tqdm(jobs, desc="verify", unit="length", disable=None, leave=False):
        per_length.setdefault(layout, {})[str(n)] = compare_length(manifest, dit, layout, n, sessions, options)
    decoders = verify_decoders(manifest, sessions, options)
    worst = max([e for errs in per_length.values() for e in errs.values()] + list(decoders.values()))
    weights = recount_weight_bytes(manifest)
    param_bytes = dit.param_bytes()
    return {
        "ok": worst <= options.atol, "max_abs_err": worst, "atol": options.atol, "per_length": per_length,
        "param_bytes": param_bytes, "weight_bytes": weights,
        "weight_ratio": {k: round(v / param_bytes, 4) for k, v in weights.items()},
        "duplicate_initializers": duplicate_initializers(manifest) if "segments" in manifest.layouts else 0,
        "decoders": decoders,
        "checked_graphs": checked, "opset": manifest.opset, "cfg": manifest.guidance,
        "batch_sizes": list(options.batch_sizes or default_batch_sizes(manifest.batch)),
        "cases_per_batch_size": options.cases,
    }
