"""Bad input across the commands, one table: each case must exit 1 with exactly one line on stderr
(no traceback) and leave no new, changed or half-written file in the folders involved.

Faults (read-only folder, full disk, permission denied) are injected by replacing the three
primitives of the write layer (odelt.fileio), so these cases run anywhere, also as root, where a
read-only chmod would not stop a write."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from odelt import fileio
from odelt.models.checkpoint import WEIGHTS_DIR

from tests.models_zoo import TINY


def _model(seed: int):
    import torch

    from odelt.models import DiT

    torch.manual_seed(seed)
    dit = DiT(TINY).eval()
    with torch.no_grad():   # upstream zero-inits the final layer: randomise it, or velocities are 0
        for p in dit.final.parameters():
            p.normal_(0.0, 0.3)
    return dit


@pytest.fixture(scope="module")
def world(tmp_path_factory, jax_small):
    """Built once: two tiny checkpoints, a bundle of the first with a profile (batches 1 and 4) and
    a quality table, upstream configs that cannot build, a truncated teacher cache, and a demo
    folder recorded as built from another model."""
    from odelt.exporter.export import ExportOptions, export_source
    from odelt.fileio import file_hash
    from odelt.models import save_checkpoint
    from odelt.schedules.quality import install_schedules, quality_rows, write_quality
    from odelt.ode.heuristics import heuristic_schedule
    from odelt.runtime.budget.profile import profile_bundle, save_profile

    root = tmp_path_factory.mktemp("world")
    model = _model(0)
    save_checkpoint(model, root / "tiny.safetensors")
    save_checkpoint(_model(1), root / "other.safetensors")
    manifest = export_source(str(root / "tiny.safetensors"), root / "bundle", ExportOptions())
    save_profile(manifest, profile_bundle(manifest, "ort", (1, 4), ("fp32",), repeats=3, time_graphs=False))
    schedules = install_schedules(manifest, [heuristic_schedule("uniform", "euler", k, 4) for k in (1, 2)])
    write_quality(manifest, quality_rows(manifest, model, schedules, ("fp32",), n=4), n=4, seed=0)
    pkl, config = jax_small[0], jax_small[1]
    (root / "heads0.json").write_text(json.dumps({**config, "num_heads": 0}))
    (root / "mlp_four.json").write_text(json.dumps({**config, "mlp_ratio": "four"}))
    key = file_hash(root / "tiny.safetensors")
    (root / "cache").mkdir()
    good = root / "cache" / "good.pt"
    import torch
    z = torch.zeros(4, 1, 8, 8)
    torch.save({"z": z, "y": torch.zeros(4, dtype=torch.long), "x": z}, good)
    data = good.read_bytes()
    good.unlink()
    # learning's stream (4 pairs) and the held-out stream (6 samples; problem.HELD_OUT_SEED_OFFSET):
    # sizes no other case computes, so the process's own cache of teacher solves cannot answer first
    for n, seed in ((4, 0), (6, 1_000_003)):
        (root / "cache" / f"{key}-n{n}-s{seed}-e128-np.pt").write_bytes(data[: len(data) // 2])
    from tests.latent.vae_files import random_vae, save_folder
    save_folder(random_vae("sd"), root / "vae")                  # a tiny SD VAE (4 latent channels)
    (root / "demo").mkdir()
    (root / "demo" / "source.json").write_text(json.dumps({"source": "other", "source_hash": "0123456789abcdef"}))
    return {"root": root, "b": root / "bundle", "ck": root / "tiny.safetensors", "other": root / "other.safetensors",
            "pkl": pkl, "heads0": root / "heads0.json", "four": root / "mlp_four.json", "cache": root / "cache",
            "demo": root / "demo", "vae": root / "vae"}


# -- faults in the write layer --------------------------------------------------------------------

def _deny(code: int):
    """No new folder and no new file can be made (a read-only or foreign folder)."""
    def make_dir(path):
        if not path.is_dir():
            raise OSError(code, os.strerror(code), str(path))

    def make_temp(path, suffix):
        raise OSError(code, os.strerror(code), str(path.parent))

    return {"make_dir": make_dir, "make_temp": make_temp}


def _full_disk():
    """Every write runs, then the disk is full when it ends (its temp file must be removed)."""
    def commit(tmp, path):
        assert Path(tmp).exists()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    return {"commit": commit}


FAULTS = {"read-only": lambda: _deny(errno.EROFS), "permission": lambda: _deny(errno.EACCES),
          "disk-full": _full_disk}
REASON = {"read-only": "Read-only file system", "permission": "Permission denied",
          "disk-full": "No space left on device"}

# -- setups that change a copy of the bundle ------------------------------------------------------


def _copy(w, tmp):
    dst = tmp / "copy"
    shutil.copytree(w["b"], dst)
    return dst


def _profile_with(value):
    def setup(w, tmp):
        dst = _copy(w, tmp)
        (path,) = (dst / "profile").glob("*.json")
        data = json.loads(path.read_text())
        data["calls"]["fp32"]["1"]["2"]["median_ms"] = value
        path.write_text(json.dumps(data))
        return dst
    return setup


G = ["generate", "{b}", "--out", "{out}/g.png"]
P = ["plan", "{b}"]
PR = ["profile", "{b}"]
Q = ["quantize", "{b}", "--precision", "int8"]
S = ["schedule", "{ck}", "--out", "{out}/s.json"]
EV = ["evaluate", "{ck}"]
T = ["train", "--steps", "1", "--batch-size", "8", "--out", "{out}/m.safetensors"]
TV = ["train-vae", "--steps", "1", "--batch-size", "2", "--out", "{out}/v"]
BUILTIN_VAE = WEIGHTS_DIR / "digits_vae"
E = ["export", "{ck}", "--out", "{out}/b"]
BATCH_RANGE = "expected a batch in the bundle's range 1..8"

# (id, argv, expected text in the error line, setup or fault)
CASES = [
    # generate
    ("gen-n-0", G + ["-n", "0"], "-n: expected an integer in 1..1000000, found 0", None),
    ("gen-batch-0", G + ["--batch", "0"], "--batch: expected an integer >= 1, found 0", None),
    ("gen-batch-neg", G + ["--batch", "-3"], "--batch: expected an integer >= 1, found -3", None),
    ("gen-batch-99", G + ["--batch", "99", "-n", "1"], f"--batch: {BATCH_RANGE}, found 99", None),
    ("gen-threads-neg", G + ["--threads", "-2"], "--threads: expected an integer in 0..1024, found -2", None),
    ("gen-seed-neg", G + ["--seed", "-1"], "--seed: expected an integer >= 0, found -1", None),
    ("gen-cfg-nan", G + ["--cfg-scale", "nan"], "--guidance-scale: expected a finite number, found nan", None),
    ("gen-budget-neg", G + ["--budget-ms", "-1"], "--budget-ms: expected a finite number > 0, found -1", None),
    ("gen-budget-0", G + ["--budget-ms", "0"], "--budget-ms: expected a finite number > 0, found 0", None),
    ("gen-budget-nan", G + ["--budget-ms", "nan"], "--budget-ms: expected a finite number > 0, found nan", None),
    ("gen-budget-and-schedule", G + ["--budget-ms", "5", "--schedule", "uniform"], "found both", None),
    ("gen-budget-tiny", G + ["--budget-ms", "1e-6", "--batch", "4"], "below the cheapest plan", None),
    ("gen-budget-batch-unprofiled", G + ["--budget-ms", "1e3", "--batch", "6"],
     "expected a batch in the profiled range 1..4, found 6", None),
    ("gen-steps-huge", G + ["--schedule", "uniform:euler:100000"], "expected an integer in 1..1024, found 100000",
     None),
    ("gen-steps-0", G + ["--schedule", "uniform:euler:0"], "expected an integer in 1..1024, found 0", None),
    ("gen-steps-text", G + ["--schedule", "uniform:euler:x"], "STEPS must be an integer", None),
    ("gen-solver", G + ["--schedule", "uniform:rk9:4"], "unknown solver 'rk9'", None),
    ("gen-kind", G + ["--schedule", "wobbly"], "unknown schedule kind 'wobbly'", None),
    ("gen-schedule-file", G + ["--schedule", "{out}/none.json"], "not found", None),
    ("gen-length", G + ["--length", "3"], "does not offer", None),
    ("gen-length-0", G + ["--length", "0"], "--length: expected an integer >= 1, found 0", None),
    ("gen-precision", G + ["--precision", "int8"], "int8", None),
    ("gen-layout", G + ["--layout", "per-length"], "per-length", None),
    ("gen-not-bundle", ["generate", "{out}", "--out", "{out}/g.png"], "not a bundle", None),
    ("gen-no-folder", ["generate", "{b}", "-n", "1", "--out", "{out}/no/g.png"], "does not exist", None),
    ("gen-read-only", G + ["-n", "1"], "g.png: Read-only file system", "read-only"),
    ("gen-permission", G + ["-n", "1"], "g.png: Permission denied", "permission"),
    ("gen-disk-full", G + ["-n", "1"], "g.png: No space left on device", "disk-full"),
    # plan
    ("plan-budget-neg", P + ["--budget-ms", "-1"], "--budget-ms: expected a finite number > 0, found -1", None),
    ("plan-budget-nan", P + ["--budget-ms", "nan"], "--budget-ms: expected a finite number > 0, found nan", None),
    ("plan-budget-inf", P + ["--budget-ms", "inf"], "--budget-ms: expected a finite number > 0, found inf", None),
    ("plan-budget-missing", P, "Missing option '--budget-ms'", None),
    ("plan-batch-neg", P + ["--budget-ms", "5", "--batch", "-4"], "--batch: expected an integer >= 1, found -4", None),
    ("plan-batch-0", P + ["--budget-ms", "5", "--batch", "0"], "--batch: expected an integer >= 1, found 0", None),
    ("plan-batch-64", P + ["--budget-ms", "5", "--batch", "64"], f"--batch: {BATCH_RANGE}, found 64", None),
    ("plan-batch-64-extrapolate", P + ["--budget-ms", "5", "--batch", "64", "--extrapolate"], BATCH_RANGE, None),
    ("plan-batch-unprofiled", P + ["--budget-ms", "1e3", "--batch", "6"], "profiled range 1..4, found 6", None),
    ("plan-budget-tiny", P + ["--budget-ms", "1e-9"], "minimum achievable latency", None),
    ("plan-device", P + ["--budget-ms", "5", "--device", "nosuch"], "no ort profile for device 'nosuch'", None),
    ("plan-latents-and-decoder", P + ["--budget-ms", "5", "--latents", "--decoder", "sd"],
     "expected --latents or --decoder, found both (--decoder sd)", None),
    ("plan-decoder-pixel-bundle", P + ["--budget-ms", "5", "--decoder", "sd"], "no decoder stage", None),
    ("plan-profile-nan", P + ["--budget-ms", "5"],
     "expected finite positive timings, found calls.fp32.1.2.median_ms = nan",
     _profile_with(float("nan"))),
    ("plan-profile-neg", P + ["--budget-ms", "5"], "calls.fp32.1.2.median_ms = -3.0", _profile_with(-3.0)),
    ("plan-profile-text", P + ["--budget-ms", "5"], "median_ms = 'fast'", _profile_with("fast")),
    ("plan-pareto-disk-full", P + ["--budget-ms", "1e3", "--pareto", "{out}/p.png"], "p.png: No space left on device",
     "disk-full"),
    # profile
    ("profile-repeats-0", PR + ["--repeats", "0"], "--repeats: expected an integer >= 1, found 0", None),
    ("profile-repeats-neg", PR + ["--repeats", "-1"], "--repeats: expected an integer >= 1, found -1", None),
    ("profile-batch-0", PR + ["--batch", "0"], "--batch: expected an integer >= 1, found 0", None),
    ("profile-batch-text", PR + ["--batch", "1,x"], "--batch: expected an integer >= 1, found 'x'", None),
    ("profile-batch-16", PR + ["--batch", "1,16"], f"--batch: {BATCH_RANGE}, found 16", None),
    ("profile-precision", PR + ["--precision", "fp16"], "fp16", None),
    ("profile-disk-full", PR + ["--batch", "1", "--repeats", "1"], "No space left on device", "disk-full"),
    # verify
    ("verify-atol-neg", ["verify", "{b}", "--atol", "-1"], "--atol: expected a finite number > 0, found -1", None),
    ("verify-atol-nan", ["verify", "{b}", "--atol", "nan"], "--atol: expected a finite number > 0, found nan", None),
    ("verify-atol-0", ["verify", "{b}", "--atol", "0"], "--atol: expected a finite number > 0, found 0", None),
    ("verify-cases-0", ["verify", "{b}", "--cases", "0"], "--cases: expected an integer >= 1, found 0", None),
    ("verify-other-source", ["verify", "{b}", "--source", "{other}"], "but the bundle was exported from hash", None),
    # quantize
    ("quant-rmse-neg", Q + ["--max-rmse", "-1"], "--max-rmse: expected a finite number > 0, found -1", None),
    ("quant-rmse-nan", Q + ["--max-rmse", "nan"], "--max-rmse: expected a finite number > 0, found nan", None),
    ("quant-fd-neg", Q + ["--max-fd-rel", "-0.1"], "--max-fd-rel: expected a finite number > 0, found -0.1", None),
    ("quant-calib-0", Q + ["--calib-samples", "0"], "--calib-samples: expected an integer in 1..1000000, found 0",
     None),
    ("quant-eval-0", Q + ["--eval-samples", "0"], "--eval-samples: expected an integer in 1..1000000, found 0", None),
    ("quant-seed-neg", Q + ["--seed", "-1"], "--seed: expected an integer >= 0, found -1", None),
    ("quant-steps-huge", Q + ["--calib-schedule", "uniform:euler:100000"], "1..1024, found 100000", None),
    ("quant-precision", ["quantize", "{b}", "--precision", "fp8"], "'fp8' is not one of", None),
    ("quant-read-only", ["quantize", _copy, "--precision", "fp16", "--calib-samples", "1", "--eval-samples", "2"],
     "Read-only file system", "read-only"),
    # build
    ("build-opt-level", ["build", "{b}", "--backend", "ort", "--opt-level", "9"],
     "--opt-level: expected an integer in 0..5, found 9", None),
    ("build-backend", ["build", "{b}", "--backend", "onnx"], "backend 'onnx'", None),
    ("build-precision", ["build", "{b}", "--backend", "ort", "--precision", "fp16"], "no fp16 graphs", None),
    ("build-target", ["build", "{b}", "--backend", "ort", "--target", "nowhere"], "unknown target 'nowhere'", None),
    ("build-disk-full", ["build", _copy, "--backend", "ort"], ".onnx: No space left on device", "disk-full"),
    ("build-permission", ["build", _copy, "--backend", "ort"], "Permission denied", "permission"),
    # export, info, inspect
    ("export-batch", E + ["--batch", "0:1:2"], "batch range", None),
    ("export-opset", E + ["--opset", "11"], "unsupported opset 11", None),
    ("export-lengths", E + ["--lengths", "2,x"], "--lengths must be comma-separated", None),
    ("export-onto-input", ["export", "{ck}", "--out", "{ck}"], "found the input itself", None),
    ("export-onto-file", ["export", "{ck}", "--out", "{heads0}"], "exists and is a file", None),
    ("export-disk-full", E, "No space left on device", "disk-full"),
    ("export-read-only", E, "b: Read-only file system", "read-only"),
    ("export-vae-kind", E + ["--vae", "vq:{vae}"], "unknown VAE kind 'vq'", None),
    ("export-vae-pixel", E + ["--vae", "sd:{vae}"], "in/out_channels are 1/1; expected them equal (a pixel-space", None),
    ("export-vae-missing", E + ["--vae", "sd:{out}/none"], "not found; expected a diffusers folder", None),
    ("info-heads-0", ["info", "{pkl}", "--config", "{heads0}"], "num_heads: expected an integer >= 1, found 0", None),
    ("info-mlp-text", ["info", "{pkl}", "--config", "{four}"], "mlp_ratio: expected a finite number > 0, found 'four'",
     None),
    ("export-heads-0", ["export", "{pkl}", "--config", "{heads0}", "--out", "{out}/b"], "num_heads", None),
    ("info-missing", ["info", "{out}/none.safetensors"], "checkpoint not found", None),
    ("inspect-not-bundle", ["inspect", "{out}"], "not a bundle", None),
    # train
    ("train-lr-nan", T + ["--lr", "nan"], "--lr: expected a finite number > 0, found nan", None),
    ("train-lr-neg", T + ["--lr", "-1"], "--lr: expected a finite number > 0, found -1", None),
    ("train-steps-0", T + ["--steps", "0"], "--steps: expected an integer >= 1, found 0", None),
    ("train-batch-4", T + ["--batch-size", "4"], "--batch-size: expected an integer >= 8, found 4", None),
    ("train-threads-0", T + ["--threads", "0"], "--threads: expected an integer in 1..1024, found 0", None),
    ("train-warmup-neg", T + ["--warmup", "-1"], "--warmup: expected an integer >= 0, found -1", None),
    ("train-disk-full", T, "m.safetensors: No space left on device", "disk-full"),
    ("train-latent-no-vae", T + ["--preset", "digits-latent"], "expects 4x4x4 (latents need --vae)", None),
    ("train-vae-missing", T + ["--preset", "digits-latent", "--vae", "{out}/none"],
     "expected a diffusers autoencoder folder", None),
    ("train-vae-latent-shape", T + ["--vae", str(BUILTIN_VAE)], "latents are 4x4x4; the model expects 1x8x8", None),
    ("vae-kl-neg", TV + ["--kl-weight", "-1"], "--kl-weight: expected a finite number >= 0, found -1", None),
    ("vae-steps-0", TV + ["--steps", "0"], "--steps: expected an integer >= 1, found 0", None),
    ("vae-batch-1", TV + ["--batch-size", "1"], "--batch-size: expected an integer >= 2, found 1", None),
    ("vae-disk-full", TV, "v: No space left on device", "disk-full"),
    ("classifier-epochs-0", ["train-classifier", "--epochs", "0", "--out", "{out}/c.safetensors"],
     "--epochs: expected an integer >= 1, found 0", None),
    # schedule, evaluate
    ("sched-pairs-1", S + ["--pairs", "1"], "--pairs: expected an integer in 2..1000000, found 1", None),
    ("sched-nfe-0", S + ["--nfe", "0"], "--nfe: expected an integer in 1..1024, found 0", None),
    ("sched-nfe-huge", S + ["--nfe", "100000"], "--nfe: expected an integer in 1..1024, found 100000", None),
    ("sched-iters-0", S + ["--nfe", "2", "--iters", "0"], "--iters: expected an integer >= 1, found 0", None),
    ("sched-dt-9", S + ["--nfe", "2", "--dt-base", "9"], "--dt-base: expected an integer in 0..7, found 9", None),
    ("sched-dt-text", S + ["--nfe", "2", "--dt-base", "fast"], "--dt-base: expected 'step', 'auto' or a level", None),
    ("sched-order", S + ["--nfe", "2", "--order", "7"], "--order: expected an integer in 1..4, found 7", None),
    ("sched-truncated-cache", S + ["--nfe", "2", "--pairs", "4", "--cache-dir", "{cache}"], "refusing teacher cache",
     None),
    ("sched-permission", S + ["--method", "uniform", "--nfe", "2"], "s.json: Permission denied", "permission"),
    ("eval-held-out-0", EV + ["uniform", "--held-out", "0"], "--held-out: expected an integer in 2..1000000, found 0",
     None),
    ("eval-held-out-1", EV + ["uniform", "--held-out", "1"], "found 1", None),
    ("eval-none", EV, "expected at least one schedule", None),
    ("eval-steps-huge", EV + ["uniform:euler:100000"], "1..1024, found 100000", None),
    ("eval-truncated-cache", EV + ["uniform:euler:2", "--held-out", "6", "--no-fd", "--cache-dir", "{cache}"],
     "refusing teacher cache", None),
    ("eval-disk-full", EV + ["uniform:euler:2", "--held-out", "4", "--no-fd", "--out", "{out}/t.json"],
     "t.json: No space left on device", "disk-full"),
    # demo
    ("demo-batch-0", ["demo", "--out", "{out}/d", "--batch", "0"], "--batch: expected an integer >= 1, found 0", None),
    ("demo-batch-16", ["demo", "--out", "{out}/d", "--batch", "16"], "range 1..8, found 16", None),
    ("demo-budget-neg", ["demo", "--out", "{out}/d", "--budget-ms", "-1"], "--budget-ms: expected a finite number > 0",
     None),
    ("demo-budget-nan", ["demo", "--out", "{out}/d", "--budget-ms", "nan"], "found nan", None),
    ("demo-other-model", ["demo", "--out", "{demo}", "--source", "{ck}"], "pass --force to rebuild every stage", None),
    ("demo-vae-kind", ["demo", "--out", "{out}/d", "--vae", "vq:{vae}"], "unknown VAE kind 'vq'", None),
    ("demo-vae-missing", ["demo", "--out", "{out}/d", "--model", "{ck}", "--vae", "sd:{out}/none"],
     "none not found; expected a diffusers folder or a weights file", None),
    # --out/--force: never an input, never a folder this tool did not make (issue 21)
    ("triton-onto-bundle", ["triton", "{b}", "--out", "{b}", "--force"], "found the input itself", None),
    ("triton-into-bundle", ["triton", "{b}", "--out", "{b}/repo", "--force"], "found a path inside the input", None),
    ("triton-onto-user-folder", ["triton", "{b}", "--out", "{demo}", "--force"], "not an odelt triton-repository",
     None),
    ("triton-max-batch-0", ["triton", "{b}", "--out", "{out}/r", "--max-batch", "0"], "--max-batch must be >= 1, found 0",
     None),
    ("export-onto-user-folder", ["export", "{ck}", "--out", "{cache}", "--force"], "not an odelt bundle", None),
    ("export-onto-demo", ["export", "{ck}", "--out", "{root}", "--force"], "a folder holding the input", None),
    ("vae-onto-user-folder", TV[:-1] + ["{cache}"], "not an odelt autoencoder", None),
    ("demo-onto-user-folder", ["demo", "--out", "{cache}"], "not an odelt demo", None),
    ("gen-out-onto-manifest", ["generate", "{b}", "--out", "{b}/manifest.json"], "found a path inside the input", None),
    ("gen-log-no-folder", G + ["--budget-ms", "1e3", "-n", "1", "--log", "{out}/no/l.jsonl"], "does not exist", None),
    ("gen-log-read-only", G + ["--budget-ms", "1e3", "-n", "1", "--log", "{out}/l.jsonl"], "Read-only file system",
     "read-only"),
    # options that cannot apply are errors, not no-ops
    ("gen-latents-pixel", G + ["--latents"], "--latents: expected a latent bundle", None),
    ("plan-latents-pixel", P + ["--budget-ms", "5", "--latents"], "--latents: expected a latent bundle", None),
    ("gen-log-no-budget", G + ["--log", "{out}/l.jsonl"], "--log applies only with --budget-ms", None),
    ("gen-quantile-no-budget", G + ["--quantile", "0.5"], "--quantile applies only with --budget-ms", None),
    ("gen-no-early-finish-no-budget", G + ["--no-early-finish"], "--no-early-finish applies only with --budget-ms",
     None),
    ("gen-precision-budget", G + ["--budget-ms", "1e3", "--precision", "fp16"], "no fp16 variant", None),
    ("build-dla-rtx", ["build", "{b}", "--backend", "tensorrt-rtx", "--dla"], "--dla applies only to --backend tensorrt",
     None),
    # the command line itself
    ("unknown-option", ["plan", "{b}", "--budget-ms", "5", "--bogus"], "No such option '--bogus'", None),
    ("unknown-command", ["nocmd"], "No such command 'nocmd'", None),
]


def _snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file and folder under roots (hidden ones too): what a failed command may not change."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            st = p.lstat()
            out[str(p)] = ("dir",) if p.is_dir() else (st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(case, world, tmp_path, run_cli, monkeypatch):
    _, argv, expected, extra = case
    places = {**world, "out": tmp_path}
    if callable(extra):
        places["b"] = extra(world, tmp_path)
    argv = [a(world, tmp_path) if callable(a) else a.format(**places) for a in argv]
    before = _snapshot(world["root"], tmp_path)
    if isinstance(extra, str):
        for name, fake in FAULTS[extra]().items():
            monkeypatch.setattr(fileio.PRIMITIVES, name, fake)
    line = run_cli(argv).error_line()
    assert expected in line, line
    if isinstance(extra, str):
        assert REASON[extra] in line, line
    assert _snapshot(world["root"], tmp_path) == before


def test_table_is_large_and_covers_every_command():
    commands = {c[1][0] for c in CASES}
    assert len(CASES) >= 60
    assert commands >= {"generate", "plan", "profile", "verify", "quantize", "build", "export", "info",
                        "inspect", "train", "train-vae", "train-classifier", "schedule", "evaluate", "demo", "triton"}
    assert {c[3] for c in CASES if isinstance(c[3], str)} == set(FAULTS)


def test_the_checks_pass_good_values(world, tmp_path, run_cli):
    """Controls: the same commands with values inside the ranges run (so the table tests the checks,
    not a command that always fails)."""
    res = run_cli(["plan", world["b"], "--budget-ms", "1e3", "--batch", "4"])
    assert res.code == 0 and "chosen:" in res.out, res.err
    res = run_cli(["plan", world["b"], "--budget-ms", "1e3", "--batch", "6", "--extrapolate"])
    assert res.code == 0 and "at batch 6" in res.out, res.err
    res = run_cli(["generate", world["b"], "-n", "2", "--batch", "2", "--threads", "1", "--schedule",
                   "uniform:euler:2", "--out", tmp_path / "g.png"])
    assert res.code == 0 and (tmp_path / "g.png").is_file(), res.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png"]


def test_demo_force_rebuilds_stages_of_another_model(world, tmp_path):
    """With --force, the stages another model left are removed (the demo then rebuilds them) and
    the folder records the model now asked for; files that are not stages stay."""
    from odelt.fileio import file_hash
    from odelt.pipeline.demo import DemoOptions, check_source, record_source

    out = tmp_path / "demo"
    shutil.copytree(world["demo"], out)
    for name in ("verify.json", "report.md", "samples_5ms.png", "notes.txt"):
        (out / name).write_text("x")
    (out / "bundle").mkdir()
    opts = DemoOptions(out=out, source=str(world["ck"]), force=True)
    want = check_source(opts, log=lambda m: None)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    record_source(opts, want)
    recorded = json.loads((out / "source.json").read_text())
    assert recorded == {"source": str(world["ck"]), "source_hash": file_hash(world["ck"])}
    check_source(DemoOptions(out=out, source=str(world["ck"])), log=lambda m: None)   # same model: reused
