"""The accuracy guard of an OpenVINO bf16/fp16 engine set: final samples along real trajectories vs
FP32, the same test as the FP16 variant's (odelt.calibration.quantize, metrics), run on the set's
own compiled engines.

OpenVINO lowers the FP32 graphs itself (INFERENCE_PRECISION_HINT), so layers over the limit are
kept FP32 with OpenVINO's per-node precision: the node's rt_info flag `disable_fp16_compression_0`
(odelt.engines.openvino.mark_fp32), which its CPU plugin honours for bf16 and f16 alike. Order of
fallback: the block linears ranked by their own reduced-precision error (sensitivity.layer_errors,
FP16 rounding as the measure: BF16 keeps fewer mantissa bits, so the ranking is a proxy, not its
error), 1, 2, 4, ... worst first, until the samples pass or none is left (AccuracyError).
The engine builder (odelt.engines.build.build_bundle) runs the rounds; this module decides them.

Decoders (latent bundles). OpenVINO lowers the decoder graph too, so it is held to the FP16
decoder's test (odelt.calibration.decoder): the FP32 final latents of the same real trajectories,
decoded by the set's compiled decoder and by the FP32 decoder graph (ONNX Runtime), image RMSE
within the same limit. A decoder over it is rebuilt whole at FP32 (engines.openvino.WHOLE_GRAPH),
not node by node: a VAE decoder has no block linears to rank, and its error is spread over its
convolutions and normalisations. The report names each decoder's verdict and what it runs in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx

from odelt.bundle.bundle import Bundle, open_bundle
from odelt.bundle.iospec import DECODER_LAYOUT, GraphSpec
from odelt.calibration import metrics, trajectories as traj
from odelt.calibration.decoder import DECODE_SAMPLES, fp32_images, image_accuracy, spread
from odelt.calibration.quantize import DEFAULT_SCHEDULES, MAX_RMSE
from odelt.errors import AccuracyError

MAX_FD_REL = 0.10


class OvGraphs:
    """run_graph for run_chain over built OpenVINO engines ({graph: blob})."""

    def __init__(self, engines: Mapping[str, Path], threads: int = 1):
        from odelt.engines.openvino import load_engine

        self._requests = {n: load_engine(p, threads).create_infer_request() for n, p in engines.items()}

    def __call__(self, spec: GraphSpec, feeds: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        res = self._requests[spec.name].infer(dict(feeds))
        return {t.name: np.array(res[t.name]) for t in spec.outputs}


class OvGuard:
    def __init__(self, manifest: Bundle, precision: str, max_rmse: float | None = None,
                 schedules: tuple[str, ...] = DEFAULT_SCHEDULES, eval_samples: int = 64, seed: int = 0,
                 decoder_max_rmse: float | None = None):
        self.manifest, self.precision = manifest, precision
        self.max_rmse = MAX_RMSE["fp16"] if max_rmse is None else float(max_rmse)
        # images in [-1, 1]: the FP16 decoder's limit (odelt.calibration.quantize._add_decoders)
        self.decoder_max_rmse = MAX_RMSE["fp16"] if decoder_max_rmse is None else float(decoder_max_rmse)
        self.seed = seed
        self.schedules = traj.per_length([traj.resolve_schedule(s, manifest) for s in schedules], manifest)
        self.noise = traj.Noise.draw(manifest, eval_samples, seed + 1)
        self.reference = metrics.reference_samples(manifest, self.schedules, self.noise)
        self.rounds: list[dict] = []
        self.keep: dict[str, set[str]] = {}
        self._ranking: list[tuple[float, str, str]] | None = None
        self._last: dict[str, Any] = {}
        self.decoders: dict[str, dict] = {}            # decoder graph -> its latest verdict
        self.decoder_fp32: set[str] = set()            # decoder graphs rebuilt whole at FP32
        self._decoded: dict[str, tuple[np.ndarray, np.ndarray]] = {}   # graph -> (latents, FP32 images)

    @classmethod
    def for_bundle(cls, bundle: str | os.PathLike, req: Any, max_rmse: float | None = None) -> OvGuard:
        return cls(open_bundle(bundle), req.precision, max_rmse)

    def check(self, graphs: dict[str, Path]) -> dict[str, tuple[str, ...]] | None:
        result = self._compare(OvGraphs({n: p for n, p in graphs.items() if self._dit(n)}))
        passed = metrics.passes(result, self.max_rmse, MAX_FD_REL)
        decoders_ok = self._check_decoders({n: p for n, p in graphs.items() if not self._dit(n)})
        kept = sum(map(len, self.keep.values()))
        self.rounds.append({"fallback_layers": kept, **metrics.summary(result), "passed": passed,
                            **({"decoders": {n: {"rmse": d["accuracy"]["rmse"], "passed": d["passed"]}
                                             for n, d in self.decoders.items()}} if self.decoders else {})})
        self._last = result
        if passed and decoders_ok:
            return None
        if passed:
            return self._keep()
        ranking = self._rank()
        if kept >= len(ranking):
            raise AccuracyError(f"OpenVINO {self.precision} misses the accuracy limit even with every block linear "
                                f"in FP32: {metrics.describe(result, self.max_rmse, MAX_FD_REL)}")
        for _, graph, node in ranking[:max(1, 2 * kept)]:
            self.keep.setdefault(graph, set()).add(node)
        return self._keep()

    def _keep(self) -> dict[str, tuple[str, ...]]:
        """What the next round keeps FP32: block linears per DiT graph, whole decoder graphs."""
        from odelt.engines.openvino import WHOLE_GRAPH

        return {**{g: tuple(sorted(n)) for g, n in self.keep.items()},
                **{g: (WHOLE_GRAPH,) for g in sorted(self.decoder_fp32)}}

    def report(self) -> dict:
        kept = sum(map(len, self.keep.values()))
        text = (f"worst RMSE {self._last.get('rmse_worst', float('nan')):.3g} vs limit {self.max_rmse:g}, "
                f"{kept} layer(s) kept FP32, {len(self.rounds)} round(s)")
        for name, d in sorted(self.decoders.items()):
            text += (f"; {name}: image RMSE {d['accuracy']['rmse']:.3g} vs limit {self.decoder_max_rmse:g}, "
                     + ("kept FP32 (whole decoder)" if d["kept_fp32"] else f"runs {d['runs']}"))
        return {"max_rmse": self.max_rmse, "rounds": self.rounds, "fp32_layers": kept, "summary": text,
                "schedules": [traj.schedule_key(s) for s in self.schedules], "eval_samples": len(self.noise.x0),
                "how": "OpenVINO per-node precision (rt_info disable_fp16_compression_0)",
                "decoders": self.decoders, "decoder_max_rmse": self.decoder_max_rmse,
                "decoder_how": "decoded FP32 final latents vs the FP32 decoder's images; over the limit: the whole "
                               "decoder graph rebuilt at FP32"}

    def _check_decoders(self, graphs: dict[str, Path]) -> bool:
        """Each built decoder graph against the FP32 decoder on the same latents; False when one
        fell back to FP32 this round (a decoder already at FP32 passes: it is the reference's graph)."""
        from odelt.engines.openvino import load_engine, read_record

        fell_back = False
        for name, path in sorted(graphs.items()):
            latents, ref = self._decoder_reference(name)
            request = load_engine(path).create_infer_request()
            got = np.concatenate([np.array(request.infer({"latent": latents[i:i + 1]})["image"])
                                  for i in range(len(latents))])
            acc = image_accuracy(ref, got)
            whole = name in self.decoder_fp32
            ok = whole or (acc["finite"] and acc["rmse"] <= self.decoder_max_rmse)
            self.decoders[name] = {"accuracy": acc, "limit_rmse": self.decoder_max_rmse, "passed": ok,
                                   "kept_fp32": whole, "runs": read_record(path).get("inference_precision")}
            if not ok:
                self.decoder_fp32.add(name)
                fell_back = True
        return not fell_back

    def _decoder_reference(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(latents, FP32 images): FP32 final samples of the guard's trajectories, spread over its runs."""
        if name not in self._decoded:
            pooled = np.concatenate([x for runs in self.reference.values() for x in runs.values()])
            latents = spread(pooled, DECODE_SAMPLES)
            self._decoded[name] = (latents, fp32_images(onnx.load(str(self.manifest.graph_path(name))), latents))
        return self._decoded[name]

    def _dit(self, name: str) -> bool:
        return self.manifest.graph(name).layout != DECODER_LAYOUT

    def _compare(self, run: OvGraphs) -> dict:
        per_run, ref, var = {}, [], []
        for layout in self.manifest.layouts:
            samples = traj.trajectories(self.manifest, run, self.schedules, self.noise, layout)
            for key, x in samples.items():
                per_run[f"{layout}/{key}"] = metrics.rmse(x, self.reference[layout][key])
                ref.append(self.reference[layout][key])
                var.append(x)
        pooled_ref, pooled_var = np.concatenate(ref), np.concatenate(var)
        out = {"rmse": metrics.rmse(pooled_var, pooled_ref), "rmse_worst": max(per_run.values()),
               "rmse_per_run": per_run, "finite": bool(np.isfinite(pooled_var).all())}
        out.update(metrics.fd_relative(self.manifest, pooled_ref, pooled_var))
        return out

    def _rank(self) -> list[tuple[float, str, str]]:
        """Block linears of every DiT graph, worst local reduced-precision error first."""
        if self._ranking is None:
            from odelt.calibration.sensitivity import layer_errors

            calib = traj.Noise.draw(self.manifest, 4, self.seed)
            feeds = traj.record_feeds(self.manifest, self.schedules, calib)
            out = []
            for name in (n for n in self.manifest.graphs if self._dit(n)):
                model = onnx.load(str(self.manifest.graph_path(name)))
                out += [(e, name, node) for node, e in layer_errors(model, feeds.get(name, [])[:8], "fp16").items()]
            self._ranking = sorted(out, reverse=True)
        return self._ranking
