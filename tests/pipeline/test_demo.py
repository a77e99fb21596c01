"""The demo on a tiny model (smoke), and the profile/plan commands on its bundle."""

import json

import numpy as np
import pytest
import torch

from odelt.cli import main
from odelt.models import DiT, save_checkpoint
from odelt.pipeline.demo import DemoOptions, run_demo

from tests.models_zoo import TINY, random_model

pytestmark = pytest.mark.integration        # the whole demo: every stage, real builds, streams under a hog


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    save_checkpoint(random_model("tiny", seed=0, std=0.05), root / "tiny.safetensors")
    opts = DemoOptions(out=root / "out", source=str(root / "tiny.safetensors"), quick=True, n=8, batch=4,
                       quality_n=16, calib_samples=2)
    return opts, run_demo(opts, log=lambda msg: None)


def test_demo_writes_report_and_runs_three_budgets(demo):
    opts, res = demo
    report = res.report.read_text()
    for section in ("Parity with PyTorch", "Latency per length", "INT8", "held-out RMSE", "Plans chosen"):
        assert section in report
    assert len(res.facts["runs"]) == 3
    assert (opts.out / "pareto.png").stat().st_size > 1000
    for run in res.facts["runs"]:
        assert run["predicted_ms"] <= run["budget_ms"] and run["measured_ms"] > 0 and run["predicted_now_ms"] > 0
        assert (opts.out / run["grid"]).is_file()
    assert res.facts["verify"]["max_abs_err"] < 1e-4
    assert {r["precision"] for r in res.facts["quality"]} == {"fp32", "int8"}
    if "openvino" in res.facts["profiles"]:                  # the backend as an axis of the plan
        assert "the backend that won each budget" in report
        assert all(r["backend"] in ("ort", "openvino") for r in res.facts["runs"])


def test_demo_plots_deadlines_under_a_hog(demo):
    opts, res = demo
    d = res.facts["deadline"]
    assert d["hog"] == [20, 40] and d["batches"] == 60 and set(d["modes"]) == {"open95", "anytime"}
    for r in d["modes"].values():
        assert len(r["latency_ms"]) == len(r["rmse"]) == len(r["plans"]) == 60
        assert all(v > 0 for v in r["latency_ms"]) and len(r["excess_ms"]) == 60
    assert d["modes"]["open95"]["replans"] == 0 and len(set(d["modes"]["open95"]["plans"])) == 1
    assert (opts.out / "deadline.png").stat().st_size > 1000
    report = res.report.read_text()
    assert "## Deadlines under interference" in report and "![deadline](deadline.png)" in report
    assert "closed loop + anytime" in report


def test_demo_builds_real_tensorrt_rtx_engines(demo):
    pytest.importorskip("tensorrt_rtx")
    opts, res = demo
    fp32 = res.facts["rtx"]["fp32"]                   # quick mode: fp32 only (int8 needs a second bundle)
    plans = sorted((opts.out / "bundle" / "engines" / fp32["set"]).glob("*.plan"))
    assert plans and fp32["plan_bytes_total"] == sum(p.stat().st_size for p in plans)
    assert fp32["ort_engine_bytes"] > 0 and fp32["build_s_total"] > 0
    assert "TensorRT-RTX engines (built on this CPU" in res.report.read_text()


def test_demo_reuses_what_is_built(demo):
    opts, _ = demo
    logs = []
    run_demo(opts, log=logs.append)
    assert any("export: reusing" in m for m in logs) and any("profile: reusing" in m for m in logs)
    assert not any("quantize: int8, calibrated" in m for m in logs)


def test_plan_command_and_budget_error(demo, capsys):
    opts, res = demo
    bundle = str(opts.out / "bundle")
    cheapest = min(r["predicted_ms"] for r in res.facts["runs"])
    main(["plan", bundle, "--budget-ms", "1e6", "--batch", "4"])
    out = capsys.readouterr().out
    assert "chosen:" in out and "*" in out
    with pytest.raises(SystemExit) as e:
        main(["plan", bundle, "--budget-ms", str(cheapest / 100), "--batch", "4"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "minimum achievable latency" in err


def test_profile_command_writes_device_profile(demo):
    opts, _ = demo
    bundle = opts.out / "bundle"
    (stored,) = (bundle / "profile").glob("*-ort.json")        # the demo also profiles its OpenVINO sets
    kept = stored.read_bytes()                          # the other tests plan from the demo's profile
    try:
        main(["profile", str(bundle), "--batch", "1", "--precision", "fp32", "--repeats", "3"])
        files = list((bundle / "profile").glob("*-ort.json"))
        assert len(files) == 1
        prof = json.loads(files[0].read_text())
    finally:
        stored.write_bytes(kept)
    assert set(prof["calls"]["fp32"]["1"]) == {"2", "4"}
    assert set(prof["graphs"]["fp32"]["1"]) >= {"cond", "head"}
    # host work measured with the real sampler: a step's host work takes time (the profile clamps a
    # noisy difference at 0, so 0 would mean it was not measured), and it is a small part of a call
    # (the chain runs 4 ONNX Runtime sessions)
    assert 0 < prof["step_overhead_ms"] < prof["calls"]["fp32"]["1"]["2"]["median_ms"]


def test_corrupt_quality_table_is_one_line_error(demo, capsys):
    opts, _ = demo
    path = opts.out / "bundle" / "quality.json"
    saved = path.read_bytes()
    try:
        path.write_text('{"format": "odelt-quality/1", "rows": [')   # cut off mid-write
        with pytest.raises(SystemExit) as e:
            main(["plan", str(opts.out / "bundle"), "--budget-ms", "1e6", "--batch", "4"])
        assert e.value.code == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "quality.json: expected JSON" in err
    finally:
        path.write_bytes(saved)


def test_measure_plan_keeps_a_partial_last_batch(demo):
    from odelt.bundle.bundle import open_bundle
    from odelt.pipeline.demo import measure_plan
    from odelt.runtime.backends import open_backend
    from odelt.runtime.budget.plans import load_candidates, load_plan_schedule
    from odelt.runtime.sampler import Sampler, generate

    opts, _ = demo
    manifest = open_bundle(opts.out / "bundle")
    candidate = next(c for c in load_candidates(manifest) if c.precision == "fp32")
    images, ms = measure_plan(manifest, candidate, batch=3, n=5)
    with open_backend("ort", manifest, lengths=tuple(sorted(set(load_plan_schedule(manifest, candidate).lengths)))) as be:
        want, _ = generate(Sampler(be, manifest, load_plan_schedule(manifest, candidate)), 5, 3, seed=0)
    np.testing.assert_allclose(images, want, atol=1e-6)                  # rows 3-4 included
    assert ms > 0
    assert np.isfinite(measure_plan(manifest, candidate, batch=8, n=2)[1])   # batch > n: still a time


def test_demo_refuses_another_model_in_its_folder(demo, tmp_path):
    from dataclasses import replace

    from odelt.errors import ConfigError

    opts, _ = demo
    torch.manual_seed(1)
    other = tmp_path / "other.safetensors"
    save_checkpoint(DiT(TINY), other)
    before = {p: p.stat().st_mtime_ns for p in opts.out.rglob("*")}
    with pytest.raises(ConfigError, match="pass --force to rebuild every stage"):
        run_demo(replace(opts, source=str(other)), log=lambda msg: None)
    assert {p: p.stat().st_mtime_ns for p in opts.out.rglob("*")} == before
    assert json.loads((opts.out / "source.json").read_text())["source"] == opts.source


def test_generate_with_budget_prints_deadline_stats_and_writes_log(demo, tmp_path, capsys):
    opts, _ = demo
    log = tmp_path / "batches.jsonl"
    main(["generate", str(opts.out / "bundle"), "--budget-ms", "1e6", "--batch", "4", "-n", "10",
          "--log", str(log), "--out", str(tmp_path / "g.png")])
    out = capsys.readouterr().out
    assert "deadline (anytime): 0/3 batches missed the budget, 0 re-plans, 0 length switches" in out
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["batch"] for r in lines] == [0, 1, 2] and not any(r["missed"] for r in lines)
    assert all(r["latency_ms"] > 0 and r["switches"] == [] and r["budget_ms"] == 1e6 for r in lines)
    with pytest.raises(SystemExit) as e:
        main(["generate", str(opts.out / "bundle"), "--budget-ms", "1", "--quantile", "1.5",
              "--out", str(tmp_path / "g.png")])
    assert e.value.code == 1 and "--quantile: expected a number in [0.5, 1), found 1.5" in capsys.readouterr().err


def test_report_shows_a_decoding_plans_decoder_share(demo, tmp_path):
    import copy

    from odelt.pipeline.report import write_report

    _, res = demo
    facts = copy.deepcopy(res.facts)
    facts["runs"][0].update({"decoder": "taesd-fp32", "decode_ms": 12.5, "decoder_share": 0.25})
    text = write_report(tmp_path / "report.md", facts).read_text()
    assert "| decoder | decode ms | decoder share |" in text
    row = {r["budget_ms"]: line for r in facts["runs"] for line in text.splitlines()
           if line.startswith(f"| {r['budget_ms']} | {r['plan']} |")}
    assert row[facts["runs"][0]["budget_ms"]].endswith("| taesd-fp32 | 12.50 | 25.0% |")
    assert row[facts["runs"][1]["budget_ms"]].endswith("| - | - | - |")     # a run that returns latents
    assert "decoder share" not in res.report.read_text()          # pixel-space runs: no decoder columns


@pytest.fixture(scope="module")
def latent_demo(tmp_path_factory):
    """The quick demo on a tiny latent DiT with a tiny 1-channel SD-VAE (2x: 16x16 images, digits-shaped
    for the classifier), given as `--vae sd:PATH` would give it."""
    pytest.importorskip("diffusers")
    from tests.latent.vae_files import random_vae, save_folder

    root = tmp_path_factory.mktemp("latent-demo")
    save_checkpoint(random_model("tiny-latent", seed=0, std=0.05), root / "tiny.safetensors")
    vae = save_folder(random_vae("sd", in_channels=1, out_channels=1), root / "vae")
    opts = DemoOptions(out=root / "out", source=str(root / "tiny.safetensors"), quick=True, n=8, batch=4,
                       quality_n=16, calib_samples=2, vaes=(("sd", str(vae)),))
    logs: list[str] = []
    return opts, run_demo(opts, log=logs.append), logs


def test_latent_demo_decodes_scores_and_counts_the_decoder(latent_demo):
    from PIL import Image

    from odelt.bundle.bundle import open_bundle

    opts, res, _ = latent_demo
    bundle = open_bundle(opts.out / "bundle")
    assert sorted(bundle.decoders) == ["sd"] and tuple(bundle.decoder().image) == (1, 16, 16)
    latent = res.facts["latent_quality"]
    assert [(r["length"], r["steps"]) for r in latent["rows"]] == [(n, k) for n in bundle.lengths for k in (1, 4)]
    for r in latent["rows"]:
        assert 0.0 <= r["rate"] <= 1.0 and np.isfinite(r["fd_digits"]) and r["fd_digits"] > 0
    assert latent["headline"]["length"] == max(bundle.lengths) and latent["headline"]["steps"] == 4
    report = res.report.read_text()
    assert "## Latent model: decoded samples scored by the digits classifier" in report
    first = latent["rows"][0]
    assert f"| {first['length']} | {first['fd_digits']:.2f} |" in report and "**Headline: full length" in report
    # the quality table's rows are scored on decoded images too, and carry the decoder's quality
    assert all(r["fd"] is not None and 0.0 <= r["rate"] <= 1.0 for r in res.facts["quality"])
    stored = json.loads((opts.out / "bundle" / "quality.json").read_text())
    assert stored["decoders"]["reference"] == {"kind": "sd", "precision": "fp32"} and stored["decoders"]["gain"] > 0
    # every plan decodes: a decoder share, and a grid of decoded 16x16 images (8 in a 3x3 grid, 2x for viewing)
    for run in res.facts["runs"]:
        assert run["decoder"] == "sd-fp32" and 0.0 < run["decoder_share"] < 1.0 and run["decode_ms"] > 0
        with Image.open(opts.out / run["grid"]) as im:
            assert im.size == (2 * (3 * 17 + 1),) * 2
    assert "| decoder | decode ms | decoder share |" in report


def test_latent_demo_measures_plans_end_to_end(latent_demo):
    from odelt.bundle.bundle import open_bundle
    from odelt.pipeline.demo import measure_plan
    from odelt.schedules.quality import decode_latents
    from odelt.runtime.backends import open_backend
    from odelt.runtime.budget.plans import load_candidates, load_plan_schedule
    from odelt.runtime.sampler import Sampler, generate

    opts, _, _ = latent_demo
    manifest = open_bundle(opts.out / "bundle")
    candidate = next(c for c in load_candidates(manifest) if c.precision == "fp32")
    images, ms = measure_plan(manifest, candidate, batch=3, n=5)
    schedule = load_plan_schedule(manifest, candidate)
    with open_backend("ort", manifest, lengths=tuple(sorted(set(schedule.lengths)))) as be:
        latents, _ = generate(Sampler(be, manifest, schedule), 5, 3, seed=0)
    np.testing.assert_allclose(images, decode_latents(manifest, "sd", "fp32", latents), atol=1e-5)
    assert images.shape == (5, 1, 16, 16) and ms > 0


def test_latent_demo_reuses_its_stages_and_refuses_another_vae(latent_demo, tmp_path):
    from dataclasses import replace

    from odelt.errors import ConfigError
    from tests.latent.vae_files import random_vae, save_folder

    opts, res, _ = latent_demo
    logs: list[str] = []
    again = run_demo(opts, log=logs.append)
    assert any("latent quality: reusing" in m for m in logs)
    assert again.facts["latent_quality"] == res.facts["latent_quality"]
    other = save_folder(random_vae("sd", seed=1, in_channels=1, out_channels=1), tmp_path / "vae")
    with pytest.raises(ConfigError, match="decoders sd:"):
        run_demo(replace(opts, vaes=(("sd", str(other)),)), log=lambda msg: None)


def test_shipped_schedules_for_another_model_are_skipped():
    from odelt.schedules.quality import fitting
    from odelt.ode.heuristics import BUILTIN_DIR
    from odelt.ode.schedule import load_schedule

    shipped = load_schedule(BUILTIN_DIR / "ld3-euler-4.json")
    logs: list[str] = []
    assert fitting([shipped], shipped.model_hash, logs.append) == [shipped] and not logs
    assert fitting([shipped], "0123456789abcdef", logs.append, "--relearn learns schedules for this model") == []
    assert logs == [f"schedules: {shipped.name} was learned for model {shipped.model_hash}, this bundle holds "
                    "0123456789abcdef; skipped (--relearn learns schedules for this model)"]


def test_the_demos_quality_table_is_the_quality_commands(demo, tmp_path, run_cli):
    """The demo's quality stage is `odelt-export quality` with the demo's schedules: on a copy of its
    bundle the command rewrites the same rows."""
    from tests.bundles import private_copy

    opts, _ = demo
    bundle = private_copy(opts.out / "bundle", tmp_path / "b")
    before = json.loads((bundle / "quality.json").read_text())
    res = run_cli(["quality", bundle, "--schedules", "uniform:euler:1", "--schedules", "uniform:euler:2",
                   "--held-out", opts.quality_n, "--force"])
    assert res.code == 0, res.err
    after = json.loads((bundle / "quality.json").read_text())
    assert after["held_out"] == before["held_out"]
    key = lambda r: r["name"]                                                    # noqa: E731
    assert [r["name"] for r in sorted(after["rows"], key=key)] == [r["name"] for r in sorted(before["rows"], key=key)]
    for a, b in zip(sorted(after["rows"], key=key), sorted(before["rows"], key=key)):
        assert a["error"] == pytest.approx(b["error"], rel=1e-5) and a["call_lengths"] == b["call_lengths"]
