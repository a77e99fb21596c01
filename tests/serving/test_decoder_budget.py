"""A latent bundle's sampler service under a budget: the plan it picks counts the decode the
request runs (its decoder kind), over the FAKE BLS hop of tests/serving/helpers.py."""

from __future__ import annotations

import pytest

from odelt.runtime.budget.planner import Candidate
from odelt.serving.repository import RepoOptions, write_repository
from tests.latent.vae_files import export_latent_bundle
from tests.serving.helpers import fake_service


@pytest.fixture(scope="module")
def budget_repo(tmp_path_factory):
    from odelt.schedules.quality import decoder_quality, install_schedules, quality_rows, write_quality
    from odelt.exporter.verify import model_for_bundle
    from odelt.ode.heuristics import heuristic_schedule
    from odelt.runtime.budget.profile import profile_bundle, save_profile

    root = tmp_path_factory.mktemp("serve-latent-budget")
    bundle = export_latent_bundle(root)
    prof = profile_bundle(bundle, "ort", (1, 2), ("fp32",), repeats=3, time_graphs=False, decoder_repeats=3)
    save_profile(bundle, prof)
    schedules = install_schedules(bundle, [heuristic_schedule("uniform", "euler", k, max(bundle.lengths))
                                           for k in (1, 2)])
    samples: dict = {}
    rows = quality_rows(bundle, model_for_bundle(bundle), schedules, ("fp32",), n=4, samples=samples)
    write_quality(bundle, rows, 4, 0, decoder_quality(bundle, samples["teacher"], samples[rows[0]["name"]]))
    return bundle, prof, rows, write_repository(bundle.root, root / "repo", RepoOptions(engines="cpu", sampler="bls"))


@pytest.mark.parametrize("kind", ["sd", "taesd"])
def test_the_budgeted_plan_counts_the_requests_decoder(budget_repo, kind):
    from odelt.runtime.budget.predict import QuantilePredictor

    bundle, prof, rows, repo = budget_repo
    svc = fake_service(repo)
    out = svc.handle(2, 0, None, None, {"budget_ms": 1e6, "decoder": kind})
    best = min(rows, key=lambda r: r["error"])
    assert out["plan"] == f"{best['name']}+{kind}" and out["images"].shape == (2, 3, 16, 16)
    assert svc.calls[-1] == f"odelt_decoder_{kind}"
    c = Candidate(out["plan"], best["schedule"], "euler", tuple(best["call_lengths"]), "fp32", 0.0, decoder=kind)
    at = QuantilePredictor(prof, 2)
    assert out["predicted_ms"] == pytest.approx(at.candidate(c))
    assert out["predicted_ms"] > at.quantile_ms("fp32", c.lengths) + 0.9 * prof["decoders"]["fp32"]["2"][kind]["median_ms"]
