"""The engine mode's decoder stage outside Triton: a latent bundle's requests leave the real
in-process engine as latents and are decoded in the decode thread by a real ONNX Runtime decoder
(the tiny latent bundle of tests/serving/helpers.py); the reply callbacks stand in for Triton's
response sender. Images, plans and predictions are those of `generate --budget-ms` with the same
seed and decoder."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from odelt.errors import OdeltError
from odelt.runtime.backends.decoder import open_decoder
from odelt.runtime.budget.plans import load_candidates
from odelt.runtime.budget.predict import QuantilePredictor
from odelt.runtime.budget.profile import load_profile
from odelt.runtime.generate import GenerateOptions, generate_from_bundle
from odelt.serving.decoding import DecodeStage
from odelt.serving.engine_model import open_engine_service
from odelt.serving.sampler_model import SamplerService
from tests.serving.helpers import make_latent_serving_bundle

PARAMS = {"threads": "1", "max_rows": "8", "window_ms": "0", "layout": "segments", "precision": "fp32",
          "decoder": "sd"}
IMAGE = (3, 16, 16)


@pytest.fixture(scope="module")
def latent_bundle(tmp_path_factory):
    return make_latent_serving_bundle(tmp_path_factory.mktemp("engine-latent") / "b")


@pytest.fixture
def service(latent_bundle):
    svc = open_engine_service(latent_bundle.root, PARAMS, lambda m: SamplerService(m, None, "fp32", 8, "sd"))
    yield svc
    svc.close()


class Box:
    def __init__(self):
        self.out, self.error = None, None
        self.sent = threading.Event()

    def __call__(self, out, error) -> None:
        self.out, self.error = out, error
        self.sent.set()


def budgets(bundle, n: int, kind: str) -> list[float]:
    """One budget per plan of that decoder (just above its predicted ms), cheapest first."""
    at = QuantilePredictor(load_profile(bundle), n)
    return sorted(1.02 * at.candidate(c) for c in load_candidates(bundle, decode=True, decoders=(kind,)))


def test_requests_decode_like_generate_with_mixed_plans_and_decoders(service, latent_bundle):
    jobs = []
    for i in range(12):
        n, kind = 1 + i % 4, ("sd", "taesd")[i % 2]
        b = budgets(latent_bundle, n, kind)
        jobs.append((n, 40 + i, kind, b[(i // 2) % len(b)]))
    boxes = [Box() for _ in jobs]
    tickets = [service.submit(n, seed, None, None, {"budget_ms": budget, **({"decoder": kind} if kind != "sd" else {})},
                              box) for (n, seed, kind, budget), box in zip(jobs, boxes)]
    assert all(b.sent.wait(60) for b in boxes)
    for (n, seed, kind, budget), box, ticket in zip(jobs, boxes, tickets):
        assert box.error is None, box.error
        ref = generate_from_bundle(latent_bundle.root, GenerateOptions(
            n=n, batch=n, seed=seed, budget_ms=budget, decoder=kind, control="open"))
        assert box.out["plan"] == ref.plan.candidate.name and box.out["plan"].endswith(f"+{kind}")
        assert box.out["predicted_ms"] == pytest.approx(ref.plan.predicted_ms, rel=1e-5)
        assert box.out["images"].shape == (n, *IMAGE)
        np.testing.assert_allclose(box.out["images"], ref.images, rtol=0, atol=1e-5)
        assert box.out["measured_ms"] >= ticket.latency_ms          # submit to decoded, not to the latents
    assert len({b.out["plan"] for b in boxes}) >= 4
    assert service.decoding.rows == sum(n for n, *_ in jobs) and service.decoding.calls == len(jobs)   # each alone


def test_decoding_runs_in_the_decode_thread_not_the_engines(service):
    seen = []
    for kind in ("sd", "taesd"):
        dec = service.decoding.decoder(kind)
        run = dec.decode

        def decode(latents, batch=None, run=run):
            seen.append(threading.current_thread().name)
            return run(latents, batch)
        dec.decode = decode
    boxes = [Box() for _ in range(6)]
    for i, box in enumerate(boxes):
        service.submit(1 + i % 3, i, None, None, {"schedule": "uniform:euler:2", "decoder": ("sd", "taesd")[i % 2]}, box)
    assert all(b.sent.wait(60) and b.error is None for b in boxes)
    assert seen and set(seen) == {"odelt-decode"}


def test_a_bad_decoder_name_is_one_line_and_the_others_go_on(service):
    good = [Box() for _ in range(3)]
    service.submit(2, 0, None, None, {"schedule": "uniform:euler:2"}, good[0])
    with pytest.raises(OdeltError, match="no 'vq' decoder") as bad:
        service.submit(1, 0, None, None, {"schedule": "uniform:euler:2", "decoder": "vq"}, Box())
    assert "\n" not in str(bad.value)
    service.submit(3, 1, None, None, {"schedule": "uniform:euler:2", "decoder": "taesd"}, good[1])
    service.submit(1, 2, None, None, {"budget_ms": 1e6}, good[2])
    assert all(b.sent.wait(60) and b.error is None for b in good)
    assert [b.out["images"].shape[0] for b in good] == [2, 3, 1]


def test_requests_that_finish_together_share_a_decode_and_a_failing_one_fails_alone(latent_bundle):
    """Batched, the stage takes everything queued when it wakes: three requests queued behind a held reply
    are decoded in one call (the same pixels as alone, within float rounding); latents of the
    wrong shape among them fail alone with their one-line error."""
    held, results = threading.Event(), {}

    def send(name, block=False):
        def out(images, error, at):
            if block:
                held.wait(30)
            results[name] = (images, error)
        return out
    stage = DecodeStage(lambda kind: open_decoder(latent_bundle, kind, threads=1).__enter__(), max_rows=8,
                        batched=True)
    try:
        rng = np.random.default_rng(0)
        lat = {k: rng.standard_normal((n, 4, 8, 8)).astype(np.float32) for k, n in (("a", 1), ("b", 2), ("c", 3))}
        stage.put(lat["a"], "sd", send("first", block=True))
        while stage.calls < 1:
            threading.Event().wait(0.005)
        for k in ("a", "b", "c"):
            stage.put(lat[k], "sd", send(k))
        held.set()
        stage.close()
        assert stage.calls == 2 and stage.rows == 7                 # the first alone, then a, b, c in one call
        with open_decoder(latent_bundle, "sd", threads=1) as dec:
            for k in ("a", "b", "c"):
                np.testing.assert_allclose(results[k][0], dec.decode(lat[k]), rtol=0, atol=1e-5)
    finally:
        stage.close()
    stage = DecodeStage(lambda kind: open_decoder(latent_bundle, kind, threads=1).__enter__(), max_rows=8,
                        batched=True)
    held.clear()
    stage.put(lat["a"], "sd", send("first", block=True))
    while stage.calls < 1:
        threading.Event().wait(0.005)
    stage.put(lat["b"], "sd", send("b"))
    stage.put(np.zeros((1, 3, 8, 8), np.float32), "sd", send("bad"))
    stage.put(lat["c"], "sd", send("c"))
    held.set()
    stage.close()
    assert results["bad"][0] is None and "expected NCHW latents" in str(results["bad"][1])
    assert "\n" not in str(results["bad"][1])
    assert results["b"][1] is None and results["c"][1] is None and results["c"][0].shape == (3, *IMAGE)


def test_the_engine_mode_is_the_default_for_latent_bundles_and_refuses_in_graph_guidance(latent_bundle, tmp_path):
    """A latent bundle on cpu engines gets the engine; a bundle whose graphs hold guidance (2 rows
    per image inside) is refused in one line when the engine is asked for, and gets BLS by default."""
    import torch

    from odelt.exporter.export import ExportOptions, export_bundle
    from odelt.models import DiT
    from odelt.serving.repository import RepoOptions, sampler_mode
    from tests.models_zoo import TINY

    assert sampler_mode(latent_bundle, RepoOptions()) == "engine"
    assert sampler_mode(latent_bundle, RepoOptions(sampler="engine")) == "engine"
    torch.manual_seed(0)
    folded = export_bundle(DiT(TINY).eval(), tmp_path / "cfg", ExportOptions(layouts=("segments",), lengths=(4,),
                                                                               guidance=True),
                           source="test:tiny", source_hash="tinyhash")
    assert sampler_mode(folded, RepoOptions()) == "bls"
    with pytest.raises(OdeltError, match="guidance folded into its graphs .* use --sampler bls") as e:
        sampler_mode(folded, RepoOptions(sampler="engine"))
    assert "\n" not in str(e.value)


def test_openvino_engine_mode_refuses_a_latent_bundle_in_one_line(latent_bundle, tmp_path):
    """The OpenVINO set holds no decoder stage for the sampler's bundle: refused before anything is written."""
    from odelt.serving.repository import RepoOptions, write_repository

    with pytest.raises(OdeltError, match="--backend openvino serves pixel-space bundles .* --backend ort") as e:
        write_repository(latent_bundle.root, tmp_path / "repo", RepoOptions(sampler="engine", backend="openvino"))
    assert "\n" not in str(e.value) and not (tmp_path / "repo").exists()
