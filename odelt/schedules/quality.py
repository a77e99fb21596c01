"""The quality table (host side): every candidate plan run through the bundle's own graphs on
held-out noise, scored against the teacher. The device reads it via odelt.runtime.budget.plans.

A candidate is (schedule, precision). Its samples come from the runtime sampler over the ONNX
Runtime backend at that precision, so the error includes what FP16/INT8 cost; the teacher is
128 full-length Euler steps of the PyTorch model from the same noise (odelt.schedules.problem),
on a seed stream that schedule learning never draws from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from odelt.errors import CheckpointError, ConfigError
from odelt.bundle.bundle import Bundle
from odelt.runtime.backends import open_backend
from odelt.runtime.budget.plans import FORMAT, QUALITY, schedule_path
from odelt.runtime.sampler import Sampler
from odelt.ode.heuristics import heuristic_schedule, resolve_schedule
from odelt.ode.schedule import Schedule, load_schedule, save_schedule

Log = Callable[[str], None]
# Candidates beside the learned schedules: uniform Euler at every exported length and these NFEs.
HEURISTIC_NFES = (1, 2, 4, 8)
HELD_OUT = 32          # the command's default: seconds on builtin:digits (the demo uses 128)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def install_schedules(manifest: Bundle, schedules: Sequence[Schedule]) -> dict[str, Schedule]:
    """Copy schedules into BUNDLE/schedules/ (validated against the bundle); name -> schedule."""
    out = {}
    model_hash = manifest.model_hash
    for s in schedules:
        s.check_fits(model_hash, manifest.lengths)
        name = _safe(s.name or f"{s.method}-{s.solver}-{s.nfe}")
        if s.method == "heuristic":  # heuristic names leave the length out; one file per length
            name += "-l" + "-".join(str(n) for n in sorted(set(s.lengths)))
        save_schedule(s, schedule_path(manifest, name))
        out[name] = s
    return out


def _fd(samples: np.ndarray) -> float | None:
    if samples.shape[1:] != (1, 8, 8):
        return None                    # FD-digits is defined for digits-shaped samples only
    from odelt.models.classifier import fd_digits
    return float(fd_digits(samples))


def digits_shaped(images: np.ndarray) -> bool:
    """(N, 1, 8k, 8k): what the digits classifier scores (odelt.models.classifier.score_images)."""
    return images.ndim == 4 and images.shape[1] == 1 and images.shape[2] == images.shape[3] \
        and images.shape[2] % 8 == 0 and images.shape[2] > 0


def sample_scores(manifest: Bundle, samples: np.ndarray, labels: np.ndarray) -> dict:
    """A row's image-space quality: {"fd"} for a pixel bundle's samples (as ever); a latent
    bundle's are decoded first (its reference decoder, FP32) and score {"fd", "rate"} (the
    classifier's confident-and-right share) when the images are digits-shaped."""
    if not manifest.decoders:
        return {"fd": _fd(samples)}
    from odelt.models.classifier import score_images

    images = decode_latents(manifest, reference_decoder(manifest), "fp32", samples, batch=64)
    if not digits_shaped(images):
        return {"fd": None}
    scores = score_images(images, labels)
    return {"fd": float(scores["fd_digits"]), "rate": float(scores["rate"])}


def reference_decoder(manifest: Bundle) -> str:
    """The decoder kind image-space errors are measured against: SD-VAE when the bundle has it."""
    return "sd" if "sd" in manifest.decoders else sorted(manifest.decoders)[0]


def quality_rows(manifest: Bundle, model, schedules: dict[str, Schedule], precisions: Sequence[str],
                 n: int = 128, seed: int = 0, progress: Callable[[str], None] | None = None,
                 samples: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Held-out RMSE to the teacher and FD-digits (sample_scores: on decoded images for a latent
    bundle, with the classifier's rate) for every (schedule, precision). `samples`, when
    given, receives the teacher's samples ("teacher") and every row's (by name): decoder_quality's
    inputs for a latent bundle."""
    from odelt.schedules.problem import make_pairs

    key = manifest.model_hash
    pairs = make_pairs(model, n, seed, held_out=True, key=key)
    z, y, teacher = pairs.z.numpy(), pairs.y.numpy().astype(np.int32), pairs.x.numpy()
    if samples is not None:
        samples["teacher"] = teacher
    rows = []
    for precision in precisions:
        with open_backend("ort", manifest, precision=precision) as be:
            for name, s in schedules.items():
                if progress:
                    progress(f"{name} {precision}")
                x, _ = Sampler(be, manifest, s).sample(z, y)
                if samples is not None:
                    samples[f"{name}-{precision}"] = x
                rows.append({"name": f"{name}-{precision}", "schedule": name, "solver": s.solver,
                             "precision": precision, "error": float(np.sqrt(np.mean((x - teacher) ** 2))),
                             **sample_scores(manifest, x, y), "call_lengths": list(s.call_lengths())})
    return rows


def decoder_quality(manifest: Bundle, teacher: np.ndarray, sampled: np.ndarray, n: int = 4,
                    threads: int = 1, kinds: Sequence[str] | None = None) -> dict:
    """The quality table's `decoders` section (odelt.runtime.budget.plans) for a latent bundle, from its
    own decoder graphs on the first n held-out images:

    * every (kind, precision) the bundle has a decoder graph in: the RMSE of its image of the
      teacher's latents against the reference decoder's (SD-VAE FP32; the only kind otherwise);
    * gain: the reference decoder's image RMSE per unit of latent RMSE, measured on real sampling
      errors: RMS(D(sampled) - D(teacher)) / RMS(sampled - teacher), `sampled` being one plan's
      samples from the same noise (pick a typical one: the gain is a local slope of the decoder).

    kinds: the decoder kinds to list (None: every one the bundle has)."""
    from odelt.runtime.budget.profile import decoder_precisions

    if not manifest.decoders:
        manifest.decoder()                                 # its one-line error: no decoder stage
    for kind in kinds or ():
        manifest.decoder(kind)                             # its one-line error: no such decoder
    ref = reference_decoder(manifest)
    teacher, sampled = teacher[:n].astype(np.float32), sampled[:n].astype(np.float32)
    latent_err = _rms(sampled - teacher)
    if not latent_err > 0:
        raise ConfigError("decoder gain: expected samples that differ from the teacher's, found identical ones")
    reference = decode_latents(manifest, ref, "fp32", teacher, threads)
    rows = []
    for kind in sorted(set(kinds or manifest.decoders)):
        for precision in decoder_precisions(manifest, kind):
            image = reference if (kind, precision) == (ref, "fp32") else \
                decode_latents(manifest, kind, precision, teacher, threads)
            rows.append({"kind": kind, "precision": precision, "error": _rms(image - reference)})
    gain = _rms(decode_latents(manifest, ref, "fp32", sampled, threads) - reference) / latent_err
    return {"reference": {"kind": ref, "precision": "fp32"}, "gain": gain, "n": int(teacher.shape[0]),
            "latent_rmse": latent_err, "rows": rows}


def decode_latents(manifest: Bundle, kind: str, precision: str, latents: np.ndarray, threads: int = 1,
                   batch: int = 1) -> np.ndarray:
    """Images of `latents` from the bundle's decoder (kind, precision), `batch` images per run (one
    by default: the decoder's cost grows with the batch, its accuracy does not; scoring many
    samples takes larger runs)."""
    from odelt.runtime.backends.decoder import open_decoder

    with open_decoder(manifest, kind, precision, threads) as decoder:
        return decoder.decode(latents, batch=batch)


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))


def write_quality(manifest: Bundle, rows: list[dict], n: int, seed: int, decoders: dict | None = None,
                  teacher: str = "euler-128-full-length") -> Path:
    """quality.json, through the bundle's owner; `decoders`: the decoder section of a latent bundle
    (decoder_quality); `teacher`: what the rows' errors were measured against."""
    data = {"format": FORMAT, "held_out": {"n": n, "seed": seed, "teacher": teacher},
            "rows": rows, **({"decoders": decoders} if decoders else {})}
    return manifest.write_side(QUALITY, data)


# -- the stage: what `odelt-export quality` and the demo run --------------------------------------

def heuristic_set(manifest: Bundle, nfes: Sequence[int] = HEURISTIC_NFES) -> list[Schedule]:
    """Uniform Euler at every exported length and each NFE."""
    return [heuristic_schedule("uniform", "euler", nfe, n) for n in manifest.lengths for nfe in nfes]


def fitting(schedules: Sequence[Schedule], model_hash: str | None, log: Log,
            hint: str = "learn one for this model with `odelt-export schedule`") -> list[Schedule]:
    """The schedules made for this model (or for none); the others skipped, each with a log line."""
    out = []
    for s in schedules:
        if s.model_hash is not None and s.model_hash != model_hash:
            log(f"schedules: {s.name} was learned for model {s.model_hash}, this bundle holds {model_hash}; "
                f"skipped ({hint})")
        else:
            out.append(s)
    return out


def bundle_schedules(manifest: Bundle) -> list[Schedule]:
    """Every schedule in BUNDLE/schedules/ (learned ones saved there, or those a quality run installed)."""
    folder = manifest.root / "schedules"
    return [load_schedule(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def resolve_schedules(manifest: Bundle, specs: Sequence[str]) -> list[Schedule]:
    """--schedules: files or builtin names as they are; a heuristic (KIND[:SOLVER[:STEPS]]) at every
    exported length."""
    out = []
    for spec in specs:
        first = resolve_schedule(spec, max(manifest.lengths))
        out += [resolve_schedule(spec, n) for n in manifest.lengths] if first.method == "heuristic" else [first]
    return out


def default_schedules(manifest: Bundle, log: Log) -> list[Schedule]:
    """The bundle's own schedules (those made for its model) plus the heuristic set."""
    return fitting(bundle_schedules(manifest), manifest.model_hash, log) + heuristic_set(manifest)


def check_precisions(manifest: Bundle, precisions: Sequence[str]) -> tuple[str, ...]:
    """The precisions asked for (default: every one the bundle has), each one the bundle has."""
    for p in precisions:
        if p not in manifest.precisions:
            raise ConfigError(f"--precision {p}: expected one of the bundle's {list(manifest.precisions)}; "
                              f"make it with `odelt-export quantize {manifest.root} --precision {p}`")
    return tuple(dict.fromkeys(precisions)) or manifest.precisions


def quality_model(manifest: Bundle, source: str | None = None):
    """The PyTorch model the teacher trajectories come from: `source`, else the manifest's record."""
    from odelt.exporter.verify import model_for_bundle

    if not (source or manifest.source):
        raise ConfigError(f"{manifest.root}: the manifest records no source model; pass --model SOURCE "
                          "(the checkpoint the bundle was exported from)")
    try:
        return model_for_bundle(manifest, source)
    except CheckpointError as e:
        raise ConfigError(f"{e} (the bundle's source model); pass --model SOURCE") from None


def typical_row(rows: list[dict]) -> dict:
    """The FP32 row of median error: decoder_quality's gain is a local slope, measured at a typical error."""
    fp32 = sorted((r for r in rows if r["precision"] == "fp32"), key=lambda r: r["error"]) or \
        sorted(rows, key=lambda r: r["error"])
    return fp32[len(fp32) // 2]


def make_quality(manifest: Bundle, model, schedules: Sequence[Schedule], precisions: Sequence[str],
                 n: int = HELD_OUT, seed: int = 0, decoders: Sequence[str] | None = None,
                 progress: Callable[[str], None] | None = None) -> tuple[Path, list[dict]]:
    """The quality stage: install the schedules in BUNDLE/schedules/, score every (schedule,
    precision) on n held-out samples, add a latent bundle's decoder section (kinds `decoders`,
    None: all) and write quality.json atomically. Returns (its path, its rows)."""
    if not schedules:
        raise ConfigError("quality: expected at least one schedule, found none")
    for kind in decoders or ():
        manifest.decoder(kind)           # before any work: a pixel bundle or an unknown kind is one line
    import torch

    installed = install_schedules(manifest, schedules)
    samples: dict[str, np.ndarray] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # torch's pool beside ONNX Runtime's on a 2-core CPU: the teacher ran 10x slower
    try:
        rows = quality_rows(manifest, model, installed, check_precisions(manifest, precisions), n, seed,
                            progress, samples)
    finally:
        torch.set_num_threads(threads)
    section = None
    if manifest.decoders:
        section = decoder_quality(manifest, samples["teacher"], samples[typical_row(rows)["name"]], kinds=decoders)
    return write_quality(manifest, rows, n, seed, section), rows
