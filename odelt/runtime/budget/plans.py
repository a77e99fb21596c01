"""Candidate plans stored in a bundle: the quality table the planner chooses from.

`quality.json` (written on the host by odelt.schedules.quality; read here, numpy only)::

    {"format": "odelt-quality/1", "held_out": {"n": int, "seed": int, "teacher": str},
     "rows": [{"name", "schedule", "solver", "precision", "error", "fd", "call_lengths": [int, ...]}],
     "decoders": {"reference": {"kind", "precision"}, "gain": float, "n": int,      (latent bundles)
                  "rows": [{"kind", "precision", "error"}]}}

`schedule` names a file under `BUNDLE/schedules/`, copied there so that a device needs nothing
but the bundle. `call_lengths` is the length of every network call the schedule makes, in order
(a Heun step calls twice, at its step's length): Schedule.call_lengths.

Decoders. A row's `error` is the sampler's, in latent space. A latent bundle's plan also picks a
decoder (kind, precision), so the candidates are rows x decoders. `decoders.rows[].error` is the
RMSE of that decoder's image against the reference decoder's (SD-VAE, FP32) on the teacher's
latents; `gain` is the reference decoder's image RMSE per unit of latent RMSE, measured on sampling
errors (odelt.schedules.quality.decoder_quality). A plan's error in image space is then

    error = sqrt( (gain * sampling_error)^2 + decoder_error^2 )

(the image of sampled latents vs the reference image of the teacher's latents, the two errors
composed as independent: root-sum-square). With one decoder option and no decoder quality the
choice cannot depend on the decoder, so the row's error is kept and only the decoder's cost is
added; with two options the table must have their quality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from odelt.errors import ConfigError
from odelt.bundle.bundle import Bundle
from odelt.fileio import read_json
from odelt.runtime.budget.planner import Candidate, choose
from odelt.runtime.budget.predict import DEFAULT_QUANTILE, Predictor
from odelt.runtime.budget.profile import decoder_precisions
from odelt.ode.schedule import Schedule, load_schedule

FORMAT = "odelt-quality/1"
QUALITY = "quality.json"


def schedule_path(manifest: Bundle, name: str) -> Path:
    return manifest.root / "schedules" / f"{name}.json"


def load_candidates(manifest: Bundle, decode: bool | None = None,
                    decoders: Sequence[str] | None = None) -> list[Candidate]:
    """The quality table's plans. decode: plans that decode (None: when the bundle has a decoder
    stage; False: latents only, `--latents`); decoders: the decoder kinds to choose from (None: all)."""
    path = manifest.root / QUALITY
    data = read_json(path, ConfigError, f"{manifest.root}: no quality table ({QUALITY}); make it with "
                     f"`odelt-export quality {manifest.root}`")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"{path}: expected an object of format {FORMAT}, found {found!r}")
    rows = [_candidate(path, i, r) for i, r in enumerate(_rows(path, data))]
    if decode is False or (decode is None and not manifest.decoders and decoders is None):
        return rows
    options, gain = decoder_options(manifest, path, data.get("decoders"), decoders)
    return [with_decoder(c, kind, precision, gain, error) for c in rows for kind, precision, error in options]


def _rows(path: Path, data: dict) -> list:
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"{path}: rows: expected a non-empty list of plans, found {type(rows).__name__}")
    return rows


def _candidate(path: Path, i: int, r: object) -> Candidate:
    """One row of the quality table, every field checked (the file is as untrusted as the bundle)."""
    def bad(key: str, expected: str, found: object) -> ConfigError:
        return ConfigError(f"{path}: rows.{i}.{key}: expected {expected}, found {found!r}")

    if not isinstance(r, dict):
        raise bad("(row)", "an object", r)
    for key in ("name", "schedule", "solver"):
        if not isinstance(r.get(key), str):
            raise bad(key, "a string", r.get(key))
    lengths = r.get("call_lengths")
    if not isinstance(lengths, list) or not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                                                           for n in lengths):
        raise bad("call_lengths", "a non-empty list of lengths (integers >= 1)", lengths)
    if r.get("precision") not in ("fp32", "fp16", "int8"):
        raise bad("precision", "fp32, fp16 or int8", r.get("precision"))
    for key in ("error", "fd"):
        v = r.get(key)
        if (key == "error" or v is not None) and not (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      and math.isfinite(v) and v >= 0):
            raise bad(key, "a finite number >= 0", v)
    return Candidate(r["name"], r["schedule"], r["solver"], tuple(r["call_lengths"]), r["precision"],
                     float(r["error"]), r.get("fd"))


def decoder_options(manifest: Bundle, path: Path, quality: dict | None,
                    kinds: Sequence[str] | None) -> tuple[list[tuple[str, str, float | None]], float | None]:
    """([(kind, precision, decoder error or None)], gain or None): the decoders a plan may use."""
    if not manifest.decoders:
        manifest.decoder()                                 # its one-line error: no decoder stage
    have = {k: decoder_precisions(manifest, k) for k in (kinds if kinds is not None else manifest.decoders)}
    if not have:
        raise ConfigError(f"{path}: expected at least one decoder kind, found none")
    if not quality:
        if len(have) > 1:
            raise ConfigError(f"{path}: the bundle decodes with {sorted(have)} but its quality table has no "
                              "decoder quality; expected one written with the decoders' errors "
                              "(odelt.schedules.quality.decoder_quality), or one decoder (--decoder KIND)")
        # No decoder errors measured: every precision of the one decoder is offered with the plan's
        # own error (an FP16 decoder only exists when quantize measured it accurate), so a run at a
        # precision whose variant decodes in FP16 (a Triton fp16 repository) still finds its plans.
        kind = next(iter(have))
        return [(kind, p, None) for p in have[kind]], None
    try:
        rows = [(str(r["kind"]), str(r["precision"]), float(r["error"])) for r in quality["rows"]]
        gain = float(quality["gain"])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ConfigError(f"{path}: expected decoders = {{'gain': number, 'rows': [{{'kind', 'precision', "
                          f"'error'}}]}}, found {str(quality)[:80]!r}") from None
    options: list[tuple[str, str, float | None]] = [(k, p, e) for k, p, e in rows if k in have and p in have[k]]
    if not options:
        raise ConfigError(f"{path}: expected decoder quality for one of {sorted(have)}, found "
                          f"{sorted({k for k, _, _ in rows})}")
    if not all(math.isfinite(v) and v >= 0 for v in (gain, *(e for _, _, e in rows))):
        raise ConfigError(f"{path}: expected finite non-negative decoder errors and gain, found gain {gain} "
                          f"and errors {[e for _, _, e in rows]}")
    return options, gain


def with_decoder(c: Candidate, kind: str, precision: str, gain: float | None, error: float | None) -> Candidate:
    """Plan c decoding with (kind, precision); its error composed in image space (module doc)."""
    name = f"{c.name}+{kind}" + ("" if precision == "fp32" else f"-{precision}")
    if gain is not None and error is not None:
        composed = math.sqrt((gain * c.error) ** 2 + error ** 2)
    else:
        composed = c.error
    return replace(c, name=name, error=composed, decoder=kind, decoder_precision=precision)


def load_plan_schedule(manifest: Bundle, candidate: Candidate) -> Schedule:
    path = schedule_path(manifest, candidate.schedule)
    if not path.is_file():
        raise ConfigError(f"{manifest.root}: plan {candidate.name} needs schedules/{path.name}, which is missing")
    return load_schedule(path)


@dataclass(frozen=True)
class Plan:
    name: str
    schedule: Schedule
    predicted_ms: float


class PlanBook:
    """A budget -> the plan `generate --budget-ms` picks, per request (a server's, the batching
    engine's): the quality table's plans at one precision, planner.choose with the profile's
    Predictor at the request's n and quantile (each kept: a server asks once per request)."""

    def __init__(self, manifest: Bundle, profile: dict[str, Any], precision: str = "fp32"):
        self.manifest, self.profile = manifest, profile
        self.candidates: list[Candidate] = [c for c in load_candidates(manifest, decode=False)
                                            if c.precision == precision]
        if not self.candidates:
            raise ConfigError(f"{manifest.root}: the quality table has no {precision} plans")
        self._predictors: dict[tuple[int, float], Predictor] = {}
        self._schedules: dict[str, Schedule] = {}

    def predictor(self, n: int, quantile: float = DEFAULT_QUANTILE) -> Predictor:
        key = (n, quantile)
        if key not in self._predictors:
            self._predictors[key] = Predictor(self.profile, n, quantile)
        return self._predictors[key]

    def plan(self, n: int, budget_ms: float, quantile: float = DEFAULT_QUANTILE) -> Plan:
        choice = choose(self.candidates, budget_ms, predictor=self.predictor(n, quantile))
        c = choice.candidate
        if c.schedule not in self._schedules:
            self._schedules[c.schedule] = load_plan_schedule(self.manifest, c)
        return Plan(c.name, self._schedules[c.schedule], choice.predicted_ms)
