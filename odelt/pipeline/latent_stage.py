"""The demo on a latent model (e.g. builtin:digits-latent): what differs from a pixel model.

* the decoder stage: the bundle is exported with the model's VAE (the builtin's own, or `--vae
  KIND:PATH`), so every later stage (quantize, build, profile, plans) carries the decoder graph;
* schedules: the shipped learned schedules were fit for builtin:digits; one made for another model
  is skipped with a log line (uniform heuristics run at every length);
* the quality table's decoder section (odelt.schedules.quality.make_quality adds it), so the
  planner's errors are image-space;
* the latent quality stage: samples through the bundle (ONNX Runtime sampler at FP32, then the
  decoder graph, no PyTorch in the loop) at every exported length x Euler steps 1/4/16/64, decoded
  and scored by the digits classifier (FD-digits and the share classified right with confidence
  > 0.9); its headline is the full length at 64 steps against the 70% target.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

Log = Callable[[str], None]
LATENT_QUALITY = "latent_quality.json"
STEPS = (1, 4, 16, 64)
QUICK_STEPS = (1, 4)              # --quick (tests): a smoke-sized table
QUICK_N = 32
TARGET_RATE = 0.70                # the share the full length at 64 Euler steps must reach
BATCH = 128                       # rows per sampler call (graphs have a dynamic batch)


def demo_vaes(source: str, vaes: tuple[tuple[str, str], ...] | None) -> tuple[tuple[str, str], ...]:
    """The decoder stages to export: `vaes` when given (--vae), else the builtin model's own VAE
    (none for a pixel model or a checkpoint file)."""
    from odelt.models.checkpoint import vae_for_source

    if vaes is not None:
        return tuple(vaes)
    own = vae_for_source(source)
    return (own,) if own else ()


def check_vaes(vaes: tuple[tuple[str, str], ...] | None) -> None:
    """--vae paths exist (DemoOptions checks before the demo writes anything; export loads them)."""
    from pathlib import Path

    from odelt.errors import CheckpointError

    for kind, path in vaes or ():
        if not Path(path).expanduser().exists():
            raise CheckpointError(f"--vae {kind}: {path} not found; expected a diffusers folder or a weights file")


def source_vaes(source: str, vaes: tuple[tuple[str, str], ...] | None) -> dict:
    """{"vaes": [KIND:hash of its files, ...]} for out/source.json (stages are reused only for the
    same decoders); {} without a decoder stage, so a pixel model's record is as before."""
    import hashlib
    from pathlib import Path

    from odelt.fileio import file_hash

    ids = []
    for kind, path in demo_vaes(source, vaes):
        p = Path(path).expanduser()
        files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
        digest = hashlib.sha256("".join(f"{f.name}:{file_hash(f)}" for f in files).encode()).hexdigest()[:16]
        ids.append(f"{kind}:{digest}")
    return {"vaes": ids} if ids else {}


def view_upscale(images: np.ndarray) -> int:
    """Pixel repeat for a sample grid: 8x8 digits 4x, decoded 32x32 images 2x."""
    return max(2, 32 // images.shape[-1])


def stage_latent_quality(out: Any, manifest: Any, quick: bool, log: Log) -> dict | None:
    """out/latent_quality.json (reused when present); None for a bundle without a decoder stage."""
    import json

    from odelt.fileio import write_json_atomic
    from odelt.schedules.quality import digits_shaped, reference_decoder

    if not manifest.decoders:
        return None
    path = out / LATENT_QUALITY
    if path.is_file():
        log(f"latent quality: reusing {path}")
        return json.loads(path.read_text())
    info = manifest.decoder(reference_decoder(manifest))
    if not digits_shaped(np.zeros((1, *info.image))):
        log(f"latent quality: skipped (decoded images are {tuple(info.image)}; the digits classifier scores "
            "(1, 8k, 8k) images)")
        return None
    steps, n = (QUICK_STEPS, QUICK_N) if quick else (STEPS, 512)
    log(f"latent quality: {n} samples x lengths {list(manifest.lengths)} x Euler steps {list(steps)}, "
        f"decoded ({info.kind}) and classified ...")
    result = latent_quality(manifest, tuple(manifest.lengths), steps, n, progress=log)
    write_json_atomic(path, result)
    return result


def latent_quality(manifest: Any, lengths: Sequence[int], steps: Sequence[int], n: int, seed: int = 0,
                   progress: Log | None = None) -> dict:
    """FD-digits and rate (classified as asked with confidence > 0.9) of n decoded samples per
    (length, uniform Euler steps), through the bundle at FP32; labels cycle 0..9, noise seeded."""
    from odelt.models.classifier import score_images
    from odelt.schedules.quality import reference_decoder
    from odelt.runtime.backends import open_backend
    from odelt.runtime.backends.decoder import open_decoder
    from odelt.ode.heuristics import heuristic_schedule
    from odelt.runtime.sampler import Sampler, generate, make_labels

    labels = make_labels(n, manifest.config.num_classes)          # what generate() conditions on
    rows = []
    with open_backend("ort", manifest, precision="fp32") as be, open_decoder(manifest, reference_decoder(manifest), threads=1) as decoder:
        for length in lengths:
            for k in steps:
                start = time.perf_counter()
                sampler = Sampler(be, manifest, heuristic_schedule("uniform", "euler", k, length))
                latents, _ = generate(sampler, n, BATCH, seed)
                scores = score_images(decoder.decode(latents, batch=BATCH), labels)
                rows.append({"length": int(length), "steps": int(k), "fd_digits": float(scores["fd_digits"]),
                             "rate": float(scores["rate"]), "rate_any": float(scores["rate_any"]),
                             "seconds": round(time.perf_counter() - start, 2)})
                if progress:
                    progress(f"latent quality: length {length}, {k} steps: rate {scores['rate']:.1%}, "
                             f"FD-digits {scores['fd_digits']:.2f}")
    return {"n": n, "seed": seed, "labels": "cycling 0..9", "precision": "fp32", "decoder": decoder.kind,
            "solver": "euler (uniform steps)", "target_rate": TARGET_RATE, "rows": rows,
            "headline": headline(rows)}


def headline(rows: list[dict]) -> dict:
    """The full length at the most steps in the table (64 in a full run), against the target."""
    top = max(rows, key=lambda r: (r["length"], r["steps"]))
    return {"length": top["length"], "steps": top["steps"], "rate": top["rate"], "rate_any": top["rate_any"],
            "fd_digits": top["fd_digits"], "target_rate": TARGET_RATE, "met": top["rate"] >= TARGET_RATE}


def headline_text(latent: dict) -> str:
    h = headline(latent["rows"])
    return (f"full length ({h['length']}), {h['steps']} Euler steps: {h['rate']:.1%} of {latent['n']} samples "
            f"classified as asked with confidence > 0.9 (target >= {h['target_rate']:.0%}: "
            f"{'met' if h['met'] else 'NOT met'}; {h['rate_any']:.1%} confident whatever the class), "
            f"FD-digits {h['fd_digits']:.2f}")
