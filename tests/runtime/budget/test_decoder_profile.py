"""The decoder stage in a real (tiny) latent bundle: the profile times both decoders per batch,
the quality table gets their errors, and `plan` counts and shows the decoder's share."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.models_zoo import random_model


@pytest.fixture(scope="module")
def latent(tmp_path_factory):
    """A tiny latent DiT exported with a tiny SD-VAE and a tiny TAESD, with an fp16 variant (FP16
    decoders), profiled at FP32 (the decoders at FP32 and FP16) at batches 1 and 2, with a quality
    table of two Euler schedules at FP32 and the decoders' quality."""
    pytest.importorskip("diffusers")
    from odelt.calibration.quantize import QuantizeOptions, quantize_bundle
    from odelt.bundle.bundle import open_bundle
    from odelt.exporter.export import ExportOptions, export_bundle
    from odelt.schedules.quality import decoder_quality, install_schedules, quality_rows, write_quality
    from odelt.ode.heuristics import heuristic_schedule
    from odelt.runtime.budget.profile import profile_bundle, save_profile
    from tests.latent.vae_files import random_vae, save_folder

    root = tmp_path_factory.mktemp("latent")
    dit = random_model("tiny-latent", seed=0, std=0.3)
    vaes = (("sd", str(save_folder(random_vae("sd"), root / "kl"))),
            ("taesd", str(save_folder(random_vae("taesd"), root / "taesd"))))
    m = export_bundle(dit, root / "b", ExportOptions(vaes=vaes), source="test:tiny-latent", source_hash="h")
    quantize_bundle(m.root, QuantizeOptions("fp16", calib_samples=2, eval_samples=4))
    m = open_bundle(m.root)
    prof = profile_bundle(m, "ort", (1, 2), ("fp32",), repeats=3, decoder_repeats=3)
    save_profile(m, prof)
    schedules = install_schedules(m, [heuristic_schedule("uniform", "euler", k, max(m.lengths)) for k in (1, 2)])
    samples: dict = {}
    rows = quality_rows(m, dit, schedules, ("fp32",), n=4, samples=samples)
    quality = decoder_quality(m, samples["teacher"], samples[rows[0]["name"]], n=4)
    write_quality(m, rows, 4, 0, quality)
    return m, prof, rows, quality, samples


def test_profile_times_each_decoder_once_per_batch(latent):
    m, prof, *_ = latent
    assert sorted(m.decoders) == ["sd", "taesd"]
    assert sorted(prof["calls"]) == ["fp32"]
    assert sorted(prof["decoders"]) == ["fp16", "fp32"]           # FP32 DiT plans may decode in FP16 too
    for precision in ("fp32", "fp16"):
        for batch in ("1", "2"):
            cells = prof["decoders"][precision][batch]
            assert sorted(cells) == ["sd", "taesd"]
            assert all(len(c["samples_ms"]) == 3 and c["median_ms"] > 0 for c in cells.values())
    # the velocity graphs are timed alone as before; the decoders only in their own section
    assert not any(name.startswith("decoder_") for name in prof["graphs"]["fp32"]["1"])
    assert prof["graphs"]["fp32"]["1"]


def test_decoder_quality_against_the_sd_vae(latent):
    m, _, rows, quality, samples = latent
    from odelt.runtime.backends.decoder import open_decoder

    assert quality["reference"] == {"kind": "sd", "precision": "fp32"}
    errors = {(r["kind"], r["precision"]): r["error"] for r in quality["rows"]}
    assert sorted(errors) == [("sd", "fp16"), ("sd", "fp32"), ("taesd", "fp16"), ("taesd", "fp32")]
    assert errors[("sd", "fp32")] == 0.0
    assert 0 < errors[("sd", "fp16")] < 0.01                # FP16 rounding only
    assert errors[("taesd", "fp32")] > 0.01                # two unrelated random decoders
    teacher, sampled = samples["teacher"], samples[rows[0]["name"]]
    with open_decoder(m, "sd", threads=1) as sd, open_decoder(m, "taesd", threads=1) as taesd:
        ref = sd.decode(teacher)
        image_err = math.sqrt(np.mean((sd.decode(sampled) - ref) ** 2))
        assert errors[("taesd", "fp32")] == pytest.approx(math.sqrt(np.mean((taesd.decode(teacher) - ref) ** 2)), rel=1e-4)
    latent_err = math.sqrt(np.mean((sampled - teacher) ** 2))
    assert latent_err > 0 and quality["gain"] == pytest.approx(image_err / latent_err, rel=1e-4)


def test_plan_counts_and_shows_the_decoder(latent, run_cli):
    m, prof, rows, quality, _ = latent
    r = run_cli(["plan", m.root, "--budget-ms", "1e6"])
    assert r.code == 0, r.err
    assert "decode ms" in r.out and "share" in r.out
    assert len([ln for ln in r.out.splitlines() if "+sd" in ln or "+taesd" in ln]) == 4 * len(rows) + 1
    assert "+sd-fp16" in r.out and "+taesd-fp16" in r.out
    # everything fits: the best image is the better schedule decoded by the reference decoder
    best = min(rows, key=lambda row: row["error"])["name"]
    assert f"chosen: {best}+sd " in r.out
    share = prof["decoders"]["fp32"]["1"]["sd"]["median_ms"]
    assert f"decoder sd-fp32 {share:.2f} ms per batch" in r.out and "of the end-to-end median" in r.out
    latents_only = run_cli(["plan", m.root, "--budget-ms", "1e6", "--latents"])
    assert latents_only.code == 0 and "decode ms" not in latents_only.out and f"chosen: {best} (" in latents_only.out
    only = run_cli(["plan", m.root, "--budget-ms", "1e6", "--decoder", "taesd"])
    assert only.code == 0 and f"chosen: {best}+taesd" in only.out and "+sd" not in only.out


def test_budgeted_generate_decodes_each_batch_with_its_plans_decoder(latent, run_cli, tmp_path):
    from odelt.runtime.generate import GenerateOptions, generate_from_bundle

    m, prof, rows, *_ = latent
    opts = dict(n=3, batch=2, threads=1, budget_ms=1e6, control="open")
    res = generate_from_bundle(m.root, GenerateOptions(**opts))
    best = min(rows, key=lambda row: row["error"])["name"]
    assert res.plan.candidate.name == f"{best}+sd" and res.decoded.kind == "sd"
    assert res.latents.shape == (3, 4, 8, 8) and res.images.shape == (3, 3, 16, 16)
    from odelt.runtime.backends.decoder import open_decoder
    with open_decoder(m, "sd", threads=1) as sd:
        np.testing.assert_allclose(res.images, sd.decode(res.latents), atol=1e-5)
    taesd = generate_from_bundle(m.root, GenerateOptions(**opts, decoder="taesd"))
    assert taesd.plan.candidate.decoder == "taesd" and taesd.decoded.kind == "taesd"
    latents = generate_from_bundle(m.root, GenerateOptions(**opts, decode=False))
    assert latents.decoded is None and latents.images.shape == (3, 4, 8, 8)
    assert latents.plan.candidate.name == best and latents.plan.decode_share() is None
    np.testing.assert_array_equal(latents.images, res.latents)
    r = run_cli(["generate", m.root, "-n", "2", "--batch", "2", "--threads", "1", "--budget-ms", "1e6",
                 "--out", tmp_path / "g.png"])
    assert r.code == 0, r.err
    assert f"first plan {best}+sd for budget" in r.out and "% of the end-to-end median" in r.out
    assert "decoding included" in r.out and "decoded with sd (fp32)" in r.out
