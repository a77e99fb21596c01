"""Accuracy of a precision variant: its final samples against FP32 from the same noise.

RMSE is taken per (layout, schedule, length) run and pooled; the guard checks the worst run, so one
bad length cannot hide behind good ones. FD-digits (Frechet distance in the digits classifier's
feature space, against the real digits set) is added for models shaped like the digits model when
the classifier is available; `fd_rel` = |FD(variant) - FD(fp32)| / FD(fp32).
"""

from __future__ import annotations

import math

import numpy as np

from odelt.calibration import trajectories as traj
from odelt.errors import OdeltError
from odelt.bundle.bundle import Bundle

MIN_FD_SAMPLES = 256   # pooled over runs; the classifier's features are 64-d


def reference_samples(manifest: Bundle, schedules: list, noise: traj.Noise) -> dict[str, dict[str, np.ndarray]]:
    """FP32 final samples: {layout: {schedule key: (B, C, H, W)}}."""
    run = traj.OrtGraphs(manifest)
    return {layout: traj.trajectories(manifest, run, schedules, noise, layout) for layout in manifest.layouts}


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def compare(manifest: Bundle, path_of, schedules: list, noise: traj.Noise, reference: dict) -> dict:
    """Sample the variant (graphs from `path_of`) and compare with `reference`."""
    run = traj.OrtGraphs(manifest, path_of)
    per_run, pooled_ref, pooled_var = {}, [], []
    for layout in manifest.layouts:
        samples = traj.trajectories(manifest, run, schedules, noise, layout)
        for key, x in samples.items():
            per_run[f"{layout}/{key}"] = rmse(x, reference[layout][key])
            pooled_ref.append(reference[layout][key])
            pooled_var.append(x)
    ref, var = np.concatenate(pooled_ref), np.concatenate(pooled_var)
    out = {"rmse": rmse(var, ref), "rmse_worst": max(per_run.values()), "rmse_per_run": per_run,
           "finite": bool(np.isfinite(var).all())}
    out.update(fd_relative(manifest, ref, var))
    return out


def fd_relative(manifest: Bundle, ref: np.ndarray, var: np.ndarray) -> dict:
    """{"fd_fp32", "fd", "fd_rel", "fd_samples"} for digits-shaped models when the classifier is available, else {}."""
    cfg = manifest.config
    if (cfg.in_channels, cfg.input_size, cfg.num_classes) != (1, 8, 10):
        return {}
    if len(ref) < MIN_FD_SAMPLES:      # a 64-d Gaussian fit from fewer samples is noise, not a metric
        return {"fd_skipped": f"{len(ref)} samples < {MIN_FD_SAMPLES}"}
    try:
        from odelt.models.classifier import fd_digits
        fd32, fd = float(fd_digits(ref)), float(fd_digits(var))
    except (ImportError, OdeltError) as e:
        return {"fd_skipped": f"digits classifier unavailable ({e})"}
    return {"fd_fp32": fd32, "fd": fd, "fd_rel": abs(fd - fd32) / max(fd32, 1e-12), "fd_samples": len(ref)}


def passes(result: dict, max_rmse: float, max_fd_rel: float) -> bool:
    fd_ok = "fd_rel" not in result or result["fd_rel"] <= max_fd_rel
    return result["finite"] and result["rmse_worst"] <= max_rmse and fd_ok


def summary(result: dict) -> dict:
    keys = ("rmse", "rmse_worst", "fd_fp32", "fd", "fd_rel")
    return {k: (round(result[k], 6) if isinstance(result[k], float) and math.isfinite(result[k]) else result[k])
            for k in keys if k in result}


def describe(result: dict, max_rmse: float, max_fd_rel: float) -> str:
    worst = max(result["rmse_per_run"], key=result["rmse_per_run"].get)
    text = f"worst RMSE {result['rmse_worst']:.4g} ({worst}) vs limit {max_rmse:g}"
    if "fd_rel" in result:
        text += f", FD-digits rel. change {result['fd_rel']:.3g} vs limit {max_fd_rel:g}"
    return text if result["finite"] else text + ", non-finite samples"
