"""The backend as an axis of the plan: with engine sets of several backends built and profiled on
this device (one profile per backend: profile.load_profile), every quality-table plan is offered on
every backend whose profile timed its precision, and each plan's latency is predicted from its own
backend's profile. The chosen plan names its backend, and that is what generation opens.

Quality. A plan's error comes from the quality table (measured with ONNX Runtime). The same graph
on another backend is the same arithmetic up to kernel order (OpenVINO fp32 vs ONNX Runtime: 1e-7
on final samples; int8 runs the same Q/DQ graph), so its row's error is kept. OpenVINO's bf16/fp16
sets lower the FP32 graphs themselves and have no quality row: their plans are the FP32 rows with
the set's guard error (final samples vs FP32, worst run) composed root-sum-square, as a decoder's
error is (plans.with_decoder), and for a decoding plan its lowered decoder's guard error too.

What runs, not what was asked. A bf16/fp16 set whose device has no path for the hint runs f32
(its record says so: backends.openvino.runs_as). Such a set is not offered: under its asked name it
would claim a precision that does not run, and as f32 it would be the FP32 plans again (the same
kernels as the openvino fp32 set). Build `--precision fp32` for OpenVINO FP32 plans.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Mapping, Sequence

from odelt.bundle.bundle import Bundle
from odelt.errors import ConfigError, OdeltError
from odelt.runtime.backends import BACKENDS
from odelt.runtime.backends.openvino import runs_as
from odelt.runtime.budget.planner import Candidate
from odelt.runtime.budget.predict import Predictor
from odelt.runtime.budget.profile import device_description, device_id, load_profile

HINTED = ("bf16", "fp16")          # OpenVINO precisions lowered from the FP32 graphs


def load_profiles(manifest: Bundle, backends: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """{backend: this device's profile}: the named backends (each must have one), or every backend
    with a profile here (at least one; without any, ONNX Runtime's one-line error). A profile that
    is there but broken is refused, not skipped."""
    if backends is not None:
        return {b: load_profile(manifest, backend=b) for b in backends}
    out: dict[str, dict[str, Any]] = {}
    for b in sorted(BACKENDS):
        try:
            want = device_id(device_description(b))
        except OdeltError:           # its library is not installed here
            continue
        if (manifest.root / "profile" / f"{want}.json").is_file():
            out[b] = load_profile(manifest, backend=b)
    return out or {"ort": load_profile(manifest, backend="ort")}


def hinted_error(manifest: Bundle, precision: str) -> float | None:
    """The guard's worst final-sample RMSE of the OpenVINO set at a hinted precision (None: no
    guarded set, or one that runs another precision than it was asked for: module doc)."""
    for entry in manifest.engine_sets.values():
        guard = entry.get("built", {}).get("guard")
        if (entry.get("backend") == "openvino" and entry.get("precision") == precision and guard
                and runs_as(entry) == precision):
            return float(guard["rounds"][-1]["rmse_worst"])
    return None


def across_backends(candidates: Sequence[Candidate], profiles: Mapping[str, dict[str, Any]],
                    manifest: Bundle) -> list[Candidate]:
    """Every plan on every profiled backend that timed its precision. With one backend the plans
    are returned as they are (named as before)."""
    if len(profiles) == 1 and next(iter(profiles)) != "openvino":
        b = next(iter(profiles))
        return [replace(c, backend=b) for c in candidates]
    out = []
    for b, prof in profiles.items():
        timed = set(prof.get("calls", {}))
        rows = list(candidates)
        if b == "openvino":   # its bf16/fp16 sets lower the FP32 graphs: their rows are the guarded ones only
            rows = [c for c in rows if c.precision not in HINTED] + _hinted_rows(candidates, manifest, timed)
        for c in rows:
            if c.precision in timed:
                out.append(replace(c, backend=b, name=c.name if b == "ort" else f"{c.name}@{b}"))
    if not out:
        raise ConfigError(f"{manifest.root}: no plan's precision was profiled on {sorted(profiles)}; expected "
                          f"profiles timing one of {sorted({c.precision for c in candidates})}")
    return out


def hinted_decoder_error(manifest: Bundle, precision: str, kind: str) -> float:
    """The guard's image RMSE of the hinted set's decoder `kind` against the FP32 decoder (0 where
    it was kept FP32 or not guarded)."""
    graph = manifest.decoder(kind).graph
    for entry in manifest.engine_sets.values():
        if entry.get("backend") == "openvino" and entry.get("precision") == precision:
            verdict = entry.get("built", {}).get("guard", {}).get("decoders", {}).get(graph)
            if verdict and not verdict.get("kept_fp32"):
                return float(verdict["accuracy"]["rmse"])
    return 0.0


def _hinted_rows(candidates: Sequence[Candidate], manifest: Bundle, timed: set[str]) -> list[Candidate]:
    """The FP32 rows at each guarded hinted precision, the guard's errors composed root-sum-square:
    the DiT's, and a decoding plan's decoder's (the set decodes with its own lowered decoder, so only
    the rows with the FP32 decoder stand for it)."""
    rows = []
    for p in HINTED:
        err = hinted_error(manifest, p) if p in timed else None
        if err is None:
            continue
        for c in candidates:
            if c.precision != "fp32" or (c.decoder is not None and c.decoder_precision != "fp32"):
                continue
            dec = hinted_decoder_error(manifest, p, c.decoder) if c.decoder is not None else 0.0
            name = c.name.replace("fp32", p, 1) if "fp32" in c.name else f"{c.name}-{p}"
            rows.append(replace(c, name=name, precision=p, error=math.sqrt(c.error ** 2 + err ** 2 + dec ** 2)))
    return rows


class ByBackend:
    """A predictor per backend behind one face: each plan is predicted by its backend's."""

    def __init__(self, predictors: Mapping[str, Any]):
        if not predictors:
            raise ConfigError("expected at least one backend's predictor, found none")
        self.predictors = dict(predictors)
        first = next(iter(self.predictors.values()))
        self.batch, self.quantile = first.batch, getattr(first, "quantile", None)

    def of(self, c: Candidate) -> Predictor:
        if c.backend not in self.predictors:
            raise ConfigError(f"plan {c.name} runs on {c.backend}, which has no profile here; expected one of "
                              f"{sorted(self.predictors)}")
        return self.predictors[c.backend]

    def candidate(self, c: Candidate) -> float:
        return float(self.of(c).candidate(c))

    def median(self, c: Candidate) -> float:
        return float(self.of(c).median(c))

    def decode(self, c: Candidate) -> float:
        return float(self.of(c).decode(c))

    def decoding(self, c: Candidate) -> tuple[float, float]:
        return self.of(c).decoding(c)

    def at(self, c: Candidate, speed: float = 1.0, tail: float = 0.0, excess_ms: float = 0.0) -> float:
        return float(self.of(c).at(c, speed, tail, excess_ms))


def predictor_of(predictor: Any, c: Candidate) -> Any:
    """The predictor that times plan c's calls (the backend's own behind a ByBackend)."""
    return predictor.of(c) if isinstance(predictor, ByBackend) else predictor
