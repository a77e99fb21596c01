"""A latent bundle's repository: each decoder graph is a model, and the sampler decodes through it
(request parameter `decoder` picks one); checked with the FAKE BLS hop of tests/serving/helpers.py
and, where a tritonserver environment exists, against Triton's schema."""

from __future__ import annotations

import json

import numpy as np
import pytest

from odelt.errors import OdeltError
from odelt.runtime.generate import GenerateOptions, generate_from_bundle
from odelt.serving.repository import RepoOptions, write_repository
from tests.latent.vae_files import export_latent_bundle
from tests.serving.helpers import fake_service


@pytest.fixture(scope="module")
def latent_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-latent")
    bundle = export_latent_bundle(root)
    return bundle, write_repository(bundle.root, root / "repo", RepoOptions(engines="cpu", sampler="bls"))


def test_repository_serves_the_decoders(latent_repo):
    bundle, repo = latent_repo
    models = sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
    assert {"odelt_decoder_sd", "odelt_decoder_taesd", "odelt_sampler"} <= set(models)
    assert (repo / "odelt_decoder_sd" / "1" / "decoder_sd.onnx").is_file()
    meta = json.loads((repo / "odelt_repository.json").read_text())
    assert meta["decoder"] == "sd" and meta["models"]["decoder_taesd"] == "odelt_decoder_taesd"
    sampler = (repo / "odelt_sampler" / "config.pbtxt").read_text()
    images = sampler.split('name: "images"')[1].split("}")[0]
    assert "dims: [-1, 3, 16, 16]" in images                # decoded images, not 4x8x8 latents


def test_service_decodes_like_generate(latent_repo):
    bundle, repo = latent_repo
    svc = fake_service(repo)
    for kind in ("sd", "taesd"):
        params = {"schedule": "uniform:euler:2"} if kind == "sd" else {"schedule": "uniform:euler:2", "decoder": kind}
        out = svc.handle(3, 5, None, None, params)
        ref = generate_from_bundle(bundle.root, GenerateOptions(schedule="uniform:euler:2", n=3, batch=3, seed=5,
                                                                decoder=kind))
        assert out["images"].shape == (3, 3, 16, 16)
        np.testing.assert_allclose(out["images"], ref.images, rtol=0, atol=1e-5)
        assert svc.calls[-1] == f"odelt_decoder_{kind}"
    with pytest.raises(OdeltError, match="no 'vq' decoder"):
        svc.handle(1, 0, None, None, {"schedule": "uniform:euler:2", "decoder": "vq"})


def test_pixel_bundle_refuses_a_decoder_parameter(cpu_repo):
    with pytest.raises(OdeltError, match="no decoder stage"):
        fake_service(cpu_repo).handle(1, 0, None, None, {"schedule": "uniform:euler:2", "decoder": "sd"})


def test_latent_configs_pass_tritons_schema(latent_repo, serving_env):
    from tests.serving.conftest import validate

    r = validate(serving_env, latent_repo[1])
    assert r.returncode == 0, r.stderr
    assert any(line.startswith("odelt_decoder_sd") for line in r.stdout.splitlines()), r.stdout
