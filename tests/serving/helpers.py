"""A tiny bundle with what the sampler model reads: schedules, a quality table, this device's profile."""

from __future__ import annotations

import json
from pathlib import Path

from tests.models_zoo import TINY
# (schedule spec, length): the plans of the synthetic quality table, cheapest first. Their errors are
# made up (decreasing with cost), which is all the planner needs to pick between them.
PLANS = (("uniform:euler:1", 2), ("uniform:euler:2", 4), ("uniform:euler:4", 4), ("cosine:heun:4", 4))


def make_serving_bundle(root: Path) -> Path:
    import torch

    from odelt.bundle.bundle import open_bundle
    from odelt.exporter.export import ExportOptions, export_bundle
    from odelt.bundle.iospec import BatchRange
    from odelt.models import DiT
    from odelt.ode.heuristics import resolve_schedule
    from odelt.runtime.budget.plans import FORMAT, QUALITY
    from odelt.runtime.budget.profile import profile_bundle, save_profile
    from odelt.ode.schedule import save_schedule

    torch.manual_seed(0)
    dit = DiT(TINY).eval()
    with torch.no_grad():   # upstream zero-inits the final layer: randomise it, or velocities are 0
        for p in dit.final.parameters():
            p.normal_(0.0, 0.3)
    export_bundle(dit, root, ExportOptions(layouts=("segments",), batch=BatchRange(1, 4, 8)),
                  source="test:tiny", source_hash="tinyhash")
    rows = []
    for i, (spec, length) in enumerate(PLANS):
        name = spec.replace(":", "-") + f"-l{length}"
        schedule = resolve_schedule(spec, length)
        save_schedule(schedule, root / "schedules" / f"{name}.json")
        rows.append({"name": name, "schedule": name, "solver": schedule.solver, "precision": "fp32",
                     "error": 1.0 / (i + 1), "fd": None, "call_lengths": list(schedule.call_lengths())})
    (root / QUALITY).write_text(json.dumps({"format": FORMAT, "held_out": {"n": 0, "seed": 0, "teacher": "none"},
                                            "rows": rows}))
    manifest = open_bundle(root)
    save_profile(manifest, profile_bundle(manifest, "ort", (1, 8), repeats=5, time_graphs=False))
    return root


def fake_service(repo: Path):
    """The repository's sampler service over a FAKE of Triton's BLS hop: each graph model's ONNX
    file runs in ONNX Runtime in this process, taking and giving the shapes a graph model does.
    `service.calls` lists the models called, in order."""
    import onnxruntime as ort

    from odelt.serving.sampler_model import open_service

    sessions, calls = {}, []

    def fake_bls(model, inputs, outputs):
        if model not in sessions:
            folder = repo / model / "1"
            sessions[model] = ort.InferenceSession(str(next(folder.glob("*.onnx"))), providers=["CPUExecutionProvider"])
        s = sessions[model]
        feeds = {i.name: inputs[i.name].reshape((inputs[i.name].shape[0], *i.shape[1:])) if len(i.shape) == 1
                 else inputs[i.name] for i in s.get_inputs()}
        calls.append(model)
        return dict(zip(outputs, s.run(outputs, feeds)))

    text = (repo / "odelt_sampler" / "config.pbtxt").read_text()
    params = {}
    for block in text.split("parameters {")[1:]:
        key = block.split('key: "')[1].split('"')[0]
        params[key] = json.loads(block.split("string_value: ")[1].split("\n")[0])
    svc = open_service(repo / "odelt_sampler" / "1" / "bundle", params, fake_bls)
    svc.calls = calls
    return svc


# (solver, steps, length): the latent bundle's plans, mixed steps, solvers and lengths
LATENT_PLANS = (("euler", 1, 4), ("euler", 2, 2), ("euler", 2, 4), ("heun", 2, 4))


def make_latent_serving_bundle(root: Path):
    """A tiny latent bundle (4x8x8 latents, sd and taesd decoders of 3x16x16 images) with what a
    budget needs: this device's profile with both decoders timed, and a quality table of the
    LATENT_PLANS measured against the teacher (decoder errors included). Returns the Bundle."""
    from odelt.exporter.verify import model_for_bundle
    from odelt.ode.heuristics import heuristic_schedule
    from odelt.runtime.budget.profile import profile_bundle, save_profile
    from odelt.schedules.quality import decoder_quality, install_schedules, quality_rows, write_quality
    from tests.latent.vae_files import export_latent_bundle

    bundle = export_latent_bundle(root)
    save_profile(bundle, profile_bundle(bundle, "ort", (1, 2, 3, 4), ("fp32",), repeats=3, time_graphs=False,
                                        decoder_repeats=3))
    schedules = install_schedules(bundle, [heuristic_schedule("uniform", solver, k, length)
                                           for solver, k, length in LATENT_PLANS])
    samples: dict = {}
    rows = quality_rows(bundle, model_for_bundle(bundle), schedules, ("fp32",), n=4, samples=samples)
    write_quality(bundle, rows, 4, 0, decoder_quality(bundle, samples["teacher"], samples[rows[0]["name"]]))
    return bundle
