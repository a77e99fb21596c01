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
                 schedules: tuple[str, ...] = DEFAULT_SCHEDULES, eval_samples: int = 64, seed: int = 0):
        self.manifest, self.precision = manifest, precision
        self.max_rmse = MAX_RMSE["fp16"] if max_rmse is None else float(max_rmse)
        self.seed = seed
        self.schedules = traj.per_length([traj.resolve_schedule(s, manifest) for s in schedules], manifest)
        self.noise = traj.Noise.draw(manifest, eval_samples, seed + 1)
        self.reference = metrics.reference_samples(manifest, self.schedules, self.noise)
        self.rounds: list[dict] = []
        self.keep: dict[str, set[str]] = {}
        self._ranking: list[tuple[float, str, str]] | None = None
        self._last: dict[str, Any] = {}

    @classmethod
    def for_bundle(cls, bundle: str | os.PathLike, req: Any, max_rmse: float | None = None) -> OvGuard:
        return cls(open_bundle(bundle), req.precision, max_rmse)

    def check(self, graphs: dict[str, Path]) -> dict[str, tuple[str, ...]] | None:
        result = self._compare(OvGraphs({n: p for n, p in graphs.items() if self._dit(n)}))
        passed = metrics.passes(result, self.max_rmse, MAX_FD_REL)
        kept = sum(map(len, self.keep.values()))
        self.rounds.append({"fallback_layers": kept, **metrics.summary(result), "passed": passed})
        self._last = result
        if passed:
            return None
        ranking = self._rank()
        if kept >= len(ranking):
            raise AccuracyError(f"OpenVINO {self.precision} misses the accuracy limit even with every block linear "
                                f"in FP32: {metrics.describe(result, self.max_rmse, MAX_FD_REL)}")
        for _, graph, node in ranking[:max(1, 2 * kept)]:
            self.keep.setdefault(graph, set()).add(node)
        return {g: tuple(sorted(n)) for g, n in self.keep.items()}

    def report(self) -> dict:
        kept = sum(map(len, self.keep.values()))
        text = (f"worst RMSE {self._last.get('rmse_worst', float('nan')):.3g} vs limit {self.max_rmse:g}, "
                f"{kept} layer(s) kept FP32, {len(self.rounds)} round(s)")
        return {"max_rmse": self.max_rmse, "rounds": self.rounds, "fp32_layers": kept, "summary": text,
                "schedules": [traj.schedule_key(s) for s in self.schedules], "eval_samples": len(self.noise.x0),
                "how": "OpenVINO per-node precision (rt_info disable_fp16_compression_0)",
                "decoder": "not guarded (the DiT's samples only)"}

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
