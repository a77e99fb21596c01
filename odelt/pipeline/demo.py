"""`odelt-export demo`: the whole pipeline on one model, artifacts reused when already built.

export -> verify -> quantize (int8) -> schedules (shipped, or re-learned) -> build (ort) ->
TensorRT-RTX engines (fp32, and int8 from a TensorRT-flavour sibling; rtx_stage.py) -> quality table -> profile (last before the plans run: a shared machine drifts) -> plan + generate
for three budgets -> a stream of batches under one budget with a CPU hog on the sampler's core
(open loop vs closed loop + anytime) -> report.md, pareto.png, deadline.png, grids.
Every stage is a library call of its own package; this module only composes and records.
A latent model (builtin:digits-latent, or a checkpoint with --vae) carries its decoder through every
stage and adds a latent quality stage (decoded samples scored by the digits classifier): latent_stage.py.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from odelt import validate
from odelt.errors import ConfigError
from odelt.fileio import check_out, make_dir, mark_output, read_json, write_json_atomic
from odelt.pipeline import latent_stage
from odelt.pipeline.ov_stage import has_openvino, stage_build_openvino

Log = Callable[[str], None]

# The shipped learned schedules the demo adds to the quality stage's heuristic set.
LEARNED = ("ld3-euler-4", "ld3-ipndm-4", "ld3-euler-8", "amed-ipndm-4", "amed-euler-4", "ld3-euler-b16")


@dataclass(frozen=True)
class DemoOptions:
    out: Path = Path("demo-out")
    source: str = "builtin:digits"
    relearn: bool = False
    budgets_ms: tuple[float, ...] | None = None   # None: three budgets spread over the candidates
    batch: int = 8                                # images per network call (and per budget)
    n: int = 64                                   # images per sample grid
    quality_n: int = 128                          # held-out noise samples for the quality table
    calib_samples: int = 16
    precisions: tuple[str, ...] = ("fp32", "int8")
    int8_flavour: str = "cpu"                     # the demo runs ONNX Runtime CPU (see calibration/int8.py)
    quick: bool = False                           # smoke-test sizes (tests)
    deadline_batches: int = 60                    # the deadline plot's stream (the bench runs 240)
    force: bool = False                           # rebuild every stage (another model in `out`)
    vaes: tuple[tuple[str, str], ...] | None = None   # decoder stages (--vae); None: the builtin's own VAE

    def __post_init__(self) -> None:
        from odelt.exporter.export import ExportOptions

        high = ExportOptions().batch.max            # the demo exports with the default batch range
        validate.batch_in("--batch", self.batch, 1, high, "the demo bundle's range")
        for budget in self.budgets_ms or ():
            validate.positive("--budget-ms", budget)
        for name in ("n", "quality_n", "calib_samples", "deadline_batches"):
            validate.count(name, getattr(self, name))
        latent_stage.check_vaes(self.vaes)


@dataclass
class DemoResult:
    report: Path
    facts: dict[str, Any] = field(default_factory=dict)


DEMO_KIND = "demo"        # the output marker of a demo folder (odelt.fileio.check_out)
SOURCE = "source.json"    # the model every stage in `out` was built from: {"source", "source_hash"}


def check_out_folder(opts: DemoOptions) -> None:
    """OUT is new, empty, or a demo folder (this tool's marker, or a record from before markers)."""
    from odelt.bundle.bundle import MANIFEST
    from odelt.models.checkpoint import resolve_source

    check_out(opts.out, DEMO_KIND, (resolve_source(opts.source),), force=True,
              legacy=lambda p: (p / SOURCE).is_file() or (p / "bundle" / MANIFEST).is_file())


def check_source(opts: DemoOptions, log: Log) -> dict:
    """Stages are reused only for the model they were built from: another model is refused, or with
    `force` every stage is removed and rebuilt. Records the model in out/source.json."""
    from odelt.fileio import file_hash
    from odelt.models.checkpoint import resolve_source

    want = {"source": opts.source, "source_hash": file_hash(resolve_source(opts.source)),
            **latent_stage.source_vaes(opts.source, opts.vaes)}
    have = read_json(opts.out / SOURCE, ConfigError) if (opts.out / SOURCE).is_file() else _bundle_source(opts)
    if have and (have.get("source_hash"), have.get("vaes")) != (want["source_hash"], want.get("vaes")):
        if not opts.force:
            raise ConfigError(f"{opts.out} holds stages built from {_built_from(have)}, not {_built_from(want)}: "
                              "pass --force to rebuild every stage, or choose another --out")
        log(f"demo: {opts.out} was built from {have.get('source')}; --force: rebuilding every stage")
        for p in sorted(opts.out.iterdir()):
            if p.name in _STAGES or p.name.startswith("samples_"):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    return want


def record_source(opts: DemoOptions, want: dict) -> None:
    """Record the model once its bundle exists: a refused model leaves no record behind."""
    write_json_atomic(opts.out / SOURCE, want)


def _built_from(record: dict) -> str:
    vaes = f", decoders {', '.join(record['vaes'])}" if record.get("vaes") else ""
    return f"{record.get('source')} (hash {record.get('source_hash')}{vaes})"


_STAGES = ("bundle", "bundle-trt-int8", "schedules", "verify.json", "demo.json", "report.md", "pareto.png",
           "deadline.png", SOURCE, latent_stage.LATENT_QUALITY)


def _bundle_source(opts: DemoOptions) -> dict | None:
    """A folder from before source.json: the bundle's manifest says which model it holds."""
    from odelt.bundle.bundle import MANIFEST, open_bundle

    if not (opts.out / "bundle" / MANIFEST).is_file():
        return None
    bundle = open_bundle(opts.out / "bundle")
    return {"source": bundle.source, "source_hash": bundle.model_hash}


def _cached(path: Path, make: Callable[[], Any], log: Log, what: str) -> Any:
    """Reuse a stage's JSON result when present; else compute and save it."""
    if path.is_file():
        log(f"{what}: reusing {path}")
        return json.loads(path.read_text())
    log(f"{what} ...")
    result = make()
    write_json_atomic(path, result)
    return result


def stage_export(opts: DemoOptions, log: Log):
    from odelt.bundle.bundle import MANIFEST, open_bundle
    from odelt.exporter.export import ExportOptions, export_source

    bundle = opts.out / "bundle"
    if (bundle / MANIFEST).is_file():
        log(f"export: reusing {bundle}")
        return open_bundle(bundle)
    log("export: segments + per-length graphs ...")
    vaes = latent_stage.demo_vaes(opts.source, opts.vaes)
    if vaes:
        log(f"export: with the decoder stage {', '.join(f'{k}:{p}' for k, p in vaes)}")
    return export_source(opts.source, bundle, ExportOptions(layouts=("segments", "per-length"), vaes=vaes))


def stage_verify(opts: DemoOptions, manifest, log: Log) -> dict:
    from odelt.exporter.verify import VerifyOptions, verify_bundle

    return _cached(opts.out / "verify.json", lambda: verify_bundle(manifest.root, VerifyOptions(cases=2)),
                   log, "verify: every length of both layouts vs PyTorch")


def stage_quantize(opts: DemoOptions, manifest, log: Log) -> dict[str, dict]:
    from odelt.calibration.quantize import QuantizeOptions, load_report, quantize_bundle
    from odelt.bundle.bundle import open_bundle

    reports = {}
    for precision in [p for p in opts.precisions if p != "fp32"]:
        if precision not in open_bundle(manifest.root).precisions:
            log(f"quantize: {precision}, calibrated on ODE trajectories ...")
            extra = {"flavour": opts.int8_flavour} if precision == "int8" else {}
            quantize_bundle(manifest.root, QuantizeOptions(precision=precision, calib_samples=opts.calib_samples,
                                                           eval_samples=32 if opts.quick else 64, **extra))
        else:
            log(f"quantize: reusing {precision}")
        reports[precision] = load_report(open_bundle(manifest.root), precision)
    return reports


def stage_schedules(opts: DemoOptions, manifest, model, log: Log) -> list:
    """Shipped learned schedules (or re-learned ones) plus the quality stage's uniform Euler heuristics."""
    from odelt.ode.heuristics import BUILTIN_DIR
    from odelt.ode.schedule import load_schedule
    from odelt.schedules.quality import HEURISTIC_NFES, fitting, heuristic_set

    out = heuristic_set(manifest, HEURISTIC_NFES[:2] if opts.quick else HEURISTIC_NFES)
    names = () if opts.quick else LEARNED
    if opts.relearn:
        out += _relearn(opts, manifest, model, names, log)
    else:
        shipped = []
        for name in names:
            path = BUILTIN_DIR / f"{name}.json"
            if path.is_file():
                shipped.append(load_schedule(path))
            else:
                log(f"schedules: {name} is not shipped; skipped")
        out += fitting(shipped, manifest.model_hash, log, "--relearn learns schedules for this model")
    return out


def _relearn(opts: DemoOptions, manifest, model, names, log: Log) -> list:
    from odelt.ode.schedule import load_schedule, save_schedule
    from odelt.schedules.make import Request, learn_schedule

    folder = opts.out / "schedules"
    make_dir(folder)
    out = []
    for name in names:
        path = folder / f"{name}.json"
        if not path.is_file():
            method, solver, n = name.split("-")
            budget = int(n[1:]) if n.startswith("b") else None
            req = Request(method=method, solver=solver, nfe=None if budget else int(n), budget=budget)
            log(f"schedules: learning {name} ...")
            s = learn_schedule(model, req, manifest.model_hash, progress=True)
            save_schedule(s, path)
        out.append(load_schedule(path))
    return out


def stage_build(opts: DemoOptions, manifest, log: Log) -> None:
    from odelt.engines.build import BuildRequest, build_bundle
    from odelt.bundle.bundle import open_bundle

    for precision in opts.precisions:
        req = BuildRequest(backend="ort", precision=precision)
        if req.set_name in open_bundle(manifest.root).engine_sets:
            log(f"build: reusing ort {precision} engines")
            continue
        log(f"build: ort {precision} engines (graphs optimised offline) ...")
        build_bundle(manifest.root, req)
    if has_openvino():
        stage_build_openvino(opts.precisions, manifest, log)


def stage_profile(opts: DemoOptions, manifest, log: Log, batches: tuple[int, ...] | None = None,
                  backend: str = "ort") -> dict:
    """The profile of `backend` at batches (default (1, opts.batch)), reused when the bundle has one."""
    from odelt.bundle.bundle import open_bundle
    from odelt.runtime.budget.profile import (
        device_description,
        device_id,
        profile_bundle,
        save_profile,
    )

    manifest = open_bundle(manifest.root)
    path = manifest.root / "profile" / f"{device_id(device_description(backend))}.json"
    if path.is_file():
        log(f"profile: reusing {path}")
        return json.loads(path.read_text())
    log(f"profile: timing every graph and length on this device ({backend}) ...")
    if backend == "openvino":
        from odelt.runtime.backends.openvino import openvino_precisions

        precisions = openvino_precisions(manifest)
    else:
        precisions = opts.precisions
    prof = profile_bundle(manifest, backend, batches or (1, opts.batch), precisions, repeats=40)  # 8 bursts of 5 per length: a noisy burst cannot move the median
    save_profile(manifest, prof)
    return prof


def stage_quality(opts: DemoOptions, manifest, model, schedules: list, log: Log) -> list[dict]:
    """`odelt-export quality` with the demo's schedules and precisions (reused when present)."""
    from odelt.bundle.bundle import open_bundle
    from odelt.runtime.budget.plans import QUALITY
    from odelt.schedules.quality import make_quality

    path = manifest.root / QUALITY
    if path.is_file():
        log(f"quality: reusing {path}")
        return json.loads(path.read_text())["rows"]
    log(f"quality: {len(schedules)} schedules x {len(opts.precisions)} precisions on held-out noise ...")
    _, rows = make_quality(open_bundle(manifest.root), model, schedules, opts.precisions, n=opts.quality_n, seed=0)
    return rows


def default_budgets(table: list[tuple[Any, float]]) -> tuple[float, ...]:
    """Three budgets: just above the cheapest plan, the middle of the range, the slowest plan."""
    ms = sorted(m for _, m in table)
    lo, hi = ms[0], ms[-1]
    return (round(lo * 1.15, 3), round(float(np.sqrt(lo * hi)), 3), round(hi * 1.01, 3))


def measure_plan(manifest, candidate, batch: int, n: int, threads: int = 1, seed: int = 0) -> tuple[np.ndarray, float]:
    """Run a plan's schedule at its precision, each batch decoded when the plan decodes; returns
    (images, median ms per full batch, end to end)."""
    from contextlib import ExitStack

    from odelt.runtime.backends import open_backend
    from odelt.runtime.backends.decoder import open_decoder
    from odelt.runtime.budget.plans import load_plan_schedule
    from odelt.runtime.sampler import Sampler, generate_batches

    schedule = load_plan_schedule(manifest, candidate)
    stamps, sizes, decoded = [], [], []

    def tick(images: int) -> None:
        stamps.append(time.perf_counter())
        sizes.append(images)
    with ExitStack() as stack:
        be = stack.enter_context(open_backend(candidate.backend, manifest, precision=candidate.precision,
                                              threads=threads, lengths=tuple(sorted(set(schedule.lengths)))))
        sampler = Sampler(be, manifest, schedule)
        decoder = stack.enter_context(open_decoder(manifest, candidate.decoder, candidate.decoder_precision,
                                                   threads, backend=candidate.backend)) if candidate.decoder else None

        def run(x0: np.ndarray, y: np.ndarray):
            x, stats = sampler.sample(x0, y)
            if decoder is not None:
                decoded.append(decoder.decode(x, len(x)))
            return x, stats
        generate_batches(run, manifest, min(batch, n), batch, seed)   # warm-up: binds buffers once
        decoded.clear()
        stamps.append(time.perf_counter())
        out, _ = generate_batches(run, manifest, n, batch, seed, progress=tick)
    times = [(b - a) * 1e3 for a, b, k in zip(stamps, stamps[1:], sizes) if k == batch]
    return (np.concatenate(decoded) if decoded else out), float(np.median(times or [(stamps[-1] - stamps[0]) * 1e3]))


def stage_plans(opts: DemoOptions, manifest, prof: dict, log: Log, profiles: dict | None = None) -> list[dict]:
    """Choose a plan for each budget, run it, and record predicted vs measured latency. `profiles`
    ({backend: profile}): plan across those backends (default: prof's only)."""
    from odelt.pipeline.report import plot_pareto
    from odelt.runtime.images import grid_image, save_png
    from odelt.runtime.budget.planner import choose
    from odelt.runtime.budget.plans import load_candidates
    from odelt.runtime.budget.predict import MEDIAN, Predictor, predict_now

    from odelt.runtime.budget.axes import ByBackend, across_backends

    profiles = profiles or {str(prof.get("backend", "ort")): prof}
    candidates = across_backends(load_candidates(manifest), profiles, manifest)
    # the demo plans at the median: the one model at q = 0.5, each plan by its backend's profile
    at = ByBackend({b: Predictor(p, opts.batch, MEDIAN) for b, p in profiles.items()})
    table = choose(candidates, float("inf"), at).table
    budgets = opts.budgets_ms or default_budgets(list(table))
    runs, marks = [], []
    for budget in budgets:
        choice = choose(candidates, budget, at)
        c = choice.candidate
        share = choice.decode_share()
        log(f"plan: budget {budget:g} ms -> {c.name}; generating {opts.n} images ...")
        # The stored profile chose the plan; a profile of just its calls, taken now, shows how much
        # of any miss is the machine's speed drifting since (a shared CPU drifts within seconds).
        predicted_now = predict_now(manifest, c, opts.batch, profiles[c.backend], MEDIAN)
        images, measured = measure_plan(manifest, c, opts.batch, opts.n, prof.get("threads", 1))
        grid = opts.out / f"samples_{budget:g}ms.png"
        save_png(grid_image(images, upscale=latent_stage.view_upscale(images)), grid)
        runs.append({"budget_ms": budget, "plan": c.name, "backend": c.backend, "precision": c.precision,
                     "solver": c.solver,
                     "nfe": c.nfe, "lengths": list(c.lengths), "error": c.error, "fd": c.fd,
                     "predicted_ms": choice.predicted_ms, "predicted_now_ms": predicted_now,
                     "measured_ms": measured, "grid": grid.name,
                     **({"decoder": f"{c.decoder}-{c.decoder_precision}", "decode_ms": share[0],
                         "decoder_share": share[1]} if share else {})})
        marks.append((choice, budget))
    plot_pareto(marks, opts.out / "pareto.png")
    return runs


def stage_deadline(opts: DemoOptions, manifest, prof: dict, log: Log) -> dict:
    """The bundle's plans under one budget, batch after batch, a CPU hog on the sampler's core for the
    middle third: the plan chosen once vs closed loop + anytime; deadline.png. A short stream
    (bench/deadline.py measures the miss rates on 240 batches)."""
    from odelt.pipeline.interference import hindsight_run, pick_budget, prepare, run_modes
    from odelt.pipeline.report import plot_deadline

    budget = pick_budget(manifest, prof, opts.batch)
    log(f"deadline: {opts.deadline_batches} batches at {budget:g} ms, a CPU hog on the sampler's core "
        "for the middle third, and the front's fixed plans under the hog ...")
    shared = prepare(manifest, prof, opts.batch, 4)
    runs = run_modes(manifest, prof, budget, opts.batch, opts.deadline_batches, modes=("open95", "anytime"),
                     shared=shared)
    best = hindsight_run(manifest, prof, budget, opts.batch, runs["anytime"]["hog"], shared)
    plot_deadline(runs, opts.out / "deadline.png", best)
    keep = ("hog", "latency_ms", "rmse", "plans", "switches", "exits", "replans", "excess_ms")
    return {"budget_ms": budget, "batch": opts.batch, "batches": opts.deadline_batches, "hog": runs["anytime"]["hog"],
            "modes": {m: {k: r[k] for k in keep} for m, r in runs.items()},
            "hindsight": best}


def run_demo(opts: DemoOptions, log: Log = print) -> DemoResult:
    from odelt.bundle.bundle import open_bundle
    from odelt.exporter.verify import model_for_bundle
    from odelt.pipeline.report import write_report
    from odelt.pipeline.rtx_stage import stage_rtx

    check_out_folder(opts)
    make_dir(opts.out)
    want = check_source(opts, log)
    mark_output(opts.out, DEMO_KIND)
    start = time.perf_counter()
    manifest = stage_export(opts, log)
    record_source(opts, want)
    verify = stage_verify(opts, manifest, log)
    quant = stage_quantize(opts, manifest, log)
    model = model_for_bundle(open_bundle(manifest.root))
    schedules = stage_schedules(opts, manifest, model, log)
    stage_build(opts, manifest, log)
    rtx = stage_rtx(opts.out, open_bundle(manifest.root), opts.source, opts.calib_samples, opts.quick, log,
                    vaes=latent_stage.demo_vaes(opts.source, opts.vaes))
    rows = stage_quality(opts, manifest, model, schedules, log)
    prof = stage_profile(opts, manifest, log)     # last before the plans run: a shared machine drifts
    profiles = {"ort": prof}
    if has_openvino():                            # the backend as an axis of the plan
        profiles["openvino"] = stage_profile(opts, manifest, log, backend="openvino")
    runs = stage_plans(opts, open_bundle(manifest.root), prof, log, profiles)
    latent = latent_stage.stage_latent_quality(opts.out, open_bundle(manifest.root), opts.quick, log)
    deadline = stage_deadline(opts, open_bundle(manifest.root), prof, log)
    facts = {"verify": verify, "quantize": quant, "profile": prof, "quality": rows, "runs": runs, "rtx": rtx,
             "profiles": {b: {"device": p["device"], "calls": p["calls"]} for b, p in profiles.items()},
             "deadline": deadline, "seconds": round(time.perf_counter() - start, 1), "source": opts.source,
             **({"latent_quality": latent} if latent else {})}
    write_json_atomic(opts.out / "demo.json", facts)
    return DemoResult(write_report(opts.out / "report.md", facts), facts)
