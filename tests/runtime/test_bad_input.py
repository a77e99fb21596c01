"""Bad input gives one-line errors: another model's schedule, a length the bundle lacks, a batch
outside the engines' profile, missing/corrupt graph files, a tampered manifest; and NaN states."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings

import numpy as np
import pytest

from odelt.cli import main
from odelt.errors import BundleError, ConfigError, OdeltError, RuntimeFailure, ScheduleError
from tests.bundles import edit_by_hand
from odelt.runtime.backends import check_batch, open_backend
from odelt.ode.heuristics import resolve_schedule
from odelt.runtime.generate import GenerateOptions, generate_from_bundle
from odelt.runtime.sampler import Sampler, make_labels, make_noise
from odelt.ode.schedule import save_schedule


def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle.root, dst)
    return dst


def test_schedule_for_another_model(tiny_bundle, tmp_path):
    s = dataclasses.replace(resolve_schedule("uniform", 4), model_hash="0123456789abcdef", name="ld3-other")
    path = save_schedule(s, tmp_path / "other.json")
    with pytest.raises(ScheduleError) as e:
        generate_from_bundle(tiny_bundle.root, GenerateOptions(schedule=str(path), n=1))
    assert "made for model 0123456789abcdef, this bundle holds model tinyhash" in _one_line(e)
    ok = dataclasses.replace(s, model_hash="tinyhash")
    generate_from_bundle(tiny_bundle.root, GenerateOptions(schedule=str(save_schedule(ok, tmp_path / "ok.json")), n=1))


def test_length_the_bundle_lacks(tiny_bundle):
    with pytest.raises(ScheduleError) as e:
        generate_from_bundle(tiny_bundle.root, GenerateOptions(length=3, n=1))
    assert "lengths [3] that the bundle does not offer (it has [2, 4])" in _one_line(e)
    with open_backend("ort", tiny_bundle, lengths=(2,)) as be:
        x = np.zeros((1, 1, 8, 8), np.float32)
        with pytest.raises(RuntimeFailure, match="length 4 is not offered"):
            be.infer({"x": x, "t": np.zeros(1, np.float32), "dt_base": np.zeros(1, np.int32),
                      "y": np.zeros(1, np.int32), "l": np.full(1, 4, np.int32)})


def test_batch_outside_engine_profile(tiny_bundle):
    check_batch(tiny_bundle, 8, profile_bound=True)
    with pytest.raises(ConfigError) as e:
        check_batch(tiny_bundle, 9, profile_bound=True)
    assert "batch 9 is outside the engines' profile 1..8" in _one_line(e)
    check_batch(tiny_bundle, 9, profile_bound=False)          # ONNX Runtime graphs take any batch
    with pytest.raises(ConfigError, match="outside the engines' profile"):   # host CFG doubles rows
        generate_from_bundle(tiny_bundle.root, GenerateOptions(n=1, batch=5, guidance_scale=2.0, backend="tensorrt"))


def test_missing_graph_file(bundle_copy):
    (bundle_copy / "segments" / "head.onnx").unlink()
    with pytest.raises(BundleError) as e:
        generate_from_bundle(bundle_copy, GenerateOptions(n=1))
    assert "segments/head.onnx is missing" in _one_line(e)


def test_corrupt_graph_file(bundle_copy):
    (bundle_copy / "segments" / "head.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(BundleError) as e:
        generate_from_bundle(bundle_copy, GenerateOptions(n=1))
    assert "segments/head.onnx was modified" in _one_line(e)
    # Corrupt but re-hashed (the manifest agrees): ONNX Runtime refuses it, still one line.
    edit_by_hand(bundle_copy, lambda data: None)
    with pytest.raises(BundleError) as e:
        generate_from_bundle(bundle_copy, GenerateOptions(n=1))
    assert "ONNX Runtime cannot load this graph" in _one_line(e)


def test_tampered_manifest(bundle_copy):
    path = bundle_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["chains"]["segments"]["4"] = ["cond", "blocks_0-1", "blocks_9-9", "head"]
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError) as e:
        generate_from_bundle(bundle_copy, GenerateOptions(n=1))
    assert "chains.segments.4.2: expected a segments graph listed under graphs, found 'blocks_9-9'" in _one_line(e)
    path.write_text("{ truncated")
    with pytest.raises(BundleError) as e:
        generate_from_bundle(bundle_copy, GenerateOptions(n=1))
    assert "expected JSON" in _one_line(e)


class FakeDivergingBackend:
    """A fake backend (not a test of any real backend): the velocity is inf when asked at time
    `bad_t` (deterministic, like a network), or on call `bad_call` only (a non-deterministic one)."""

    name, layout, lengths = "fake", "segments", (2, 4)

    def __init__(self, bad_t=None, bad_call=None):
        self.calls, self.bad_t, self.bad_call = 0, bad_t, bad_call

    def infer(self, feeds):
        self.calls += 1
        bad = self.calls == self.bad_call or (self.bad_t is not None and abs(feeds["t"][0] - self.bad_t) < 1e-6)
        return {"velocity": np.full(np.shape(feeds["x"]), np.inf if bad else 0.1, np.float32)}


def test_non_finite_state_names_the_step(tiny_bundle):
    schedule = resolve_schedule("uniform:euler:5", 4)
    backend = FakeDivergingBackend(bad_t=0.4)
    sampler = Sampler(backend, tiny_bundle, schedule)
    with pytest.raises(RuntimeFailure) as e, warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always", append=True)    # shows all the filters do not already decide
        sampler.sample(make_noise(0, 2, (1, 8, 8)), make_labels(2, 10))
    assert not shown                                    # the clear error only, no numpy warning first
    assert "non-finite at step 2 (t=0.6)" in _one_line(e)
    assert backend.calls == 5 + 3            # the run, then a replay that stops at the bad step


def test_non_finite_state_that_does_not_replay_says_so(tiny_bundle):
    sampler = Sampler(FakeDivergingBackend(bad_call=3), tiny_bundle, resolve_schedule("uniform:euler:5", 4))
    with pytest.raises(RuntimeFailure) as e:
        sampler.sample(make_noise(0, 2, (1, 8, 8)), make_labels(2, 10))
    assert "not deterministic" in _one_line(e)


def test_cli_errors_are_one_line_exit_1(tiny_bundle, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", str(tiny_bundle.root), "--schedule", "uniform:rk9:4", "--out", str(tmp_path / "g.png")])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("odelt-export: error: unknown solver 'rk9'") and "\n" not in err
    assert not (tmp_path / "g.png").exists()


def test_cli_generate_writes_grid_and_array(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "grid.png"
    main(["generate", str(tiny_bundle.root), "--schedule", "cosine:heun:3", "-n", "5", "--batch", "2",
          "--seed", "1", "--out", str(out), "--save-array"])
    text = capsys.readouterr().out
    assert "ms/image" in text and "ms per network call" in text and "peak memory" in text
    arr = np.load(tmp_path / "grid.npy")
    assert arr.shape == (5, 1, 8, 8) and np.isfinite(arr).all()
    from PIL import Image
    assert Image.open(out).size[0] > 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.npy", "grid.png"]
    assert issubclass(ScheduleError, OdeltError)
