"""The quality stage (make_quality: what `odelt-export quality` and the demo run) on a tiny latent
bundle: the rows, and a decoder section restricted to the kinds asked for."""

from __future__ import annotations

import json

import pytest

from tests.models_zoo import random_model


@pytest.fixture(scope="module")
def latent(tmp_path_factory):
    pytest.importorskip("diffusers")
    from odelt.exporter.export import ExportOptions, export_bundle
    from tests.latent.vae_files import random_vae, save_folder

    root = tmp_path_factory.mktemp("latent")
    dit = random_model("tiny-latent", seed=0, std=0.3)
    vaes = (("sd", str(save_folder(random_vae("sd"), root / "kl"))),
            ("taesd", str(save_folder(random_vae("taesd"), root / "taesd"))))
    return export_bundle(dit, root / "b", ExportOptions(vaes=vaes), source="test:tiny-latent", source_hash="h"), dit


def test_make_quality_scores_rows_and_lists_the_decoders_asked_for(latent):
    from odelt.ode.heuristics import heuristic_schedule
    from odelt.schedules.quality import make_quality

    m, dit = latent
    schedules = [heuristic_schedule("uniform", "euler", k, max(m.lengths)) for k in (1, 2)]
    seen: list[str] = []
    path, rows = make_quality(m, dit, schedules, ("fp32",), n=4, decoders=("taesd",), progress=seen.append)
    data = json.loads(path.read_text())
    assert [r["name"] for r in data["rows"]] == [r["name"] for r in rows] == [
        f"uniform-euler-{k}-l{max(m.lengths)}-fp32" for k in (1, 2)]
    assert seen == [f"uniform-euler-{k}-l{max(m.lengths)} fp32" for k in (1, 2)]
    assert data["decoders"]["reference"] == {"kind": "sd", "precision": "fp32"}     # still the SD-VAE
    assert {r["kind"] for r in data["decoders"]["rows"]} == {"taesd"}
    assert data["decoders"]["gain"] > 0 and data["held_out"]["n"] == 4


def test_make_quality_refuses_an_unknown_decoder(latent):
    from odelt.errors import BundleError
    from odelt.ode.heuristics import heuristic_schedule
    from odelt.schedules.quality import make_quality

    m, dit = latent
    with pytest.raises(BundleError, match="no 'vq' decoder"):
        make_quality(m, dit, [heuristic_schedule("uniform", "euler", 1, max(m.lengths))], ("fp32",), n=2,
                     decoders=("vq",))
