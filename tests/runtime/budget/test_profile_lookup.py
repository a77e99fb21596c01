"""One profile lookup keyed by device and backend: `plan`, the stream (generate) and the Triton
sampler each plan from the profile of the backend they run on; a missing one is one line naming
the command that makes it. Synthetic profiles (exact choices) on a tiny real bundle."""

from __future__ import annotations

import json
import shutil
from contextlib import ExitStack

import pytest

from odelt.errors import ConfigError
from odelt.runtime.budget.profile import FORMAT, device_description, device_id, load_profile
from tests.serving.helpers import PLANS, make_serving_bundle


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    return make_serving_bundle(tmp_path_factory.mktemp("lookup") / "tiny")


def _cell(ms):
    return {"median_ms": ms, "p90_ms": ms, "p99_ms": ms}


def write_profile(root, backend, ms_by_length):
    """A profile of `backend` on this device: one call at length l costs ms_by_length[l], at batch 1."""
    pid = device_id(device_description(backend))
    prof = {"format": FORMAT, "device_id": pid, "backend": backend, "step_overhead_ms": 0.0,
            "sample_overhead_ms": 0.0, "calls": {"fp32": {"1": {str(n): _cell(ms) for n, ms in ms_by_length.items()}}}}
    (root / "profile").mkdir(exist_ok=True)
    (root / "profile" / f"{pid}.json").write_text(json.dumps(prof))


@pytest.fixture
def two_profiles(planned, tmp_path):
    """The bundle with an ort profile where every call costs 1 ms, and a tensorrt one where a
    length-4 call costs 10 ms. Budget 9 ms: ort fits cosine:heun:4 (8 calls, the best plan);
    tensorrt only uniform:euler:1 at length 2 (1 call)."""
    from odelt.bundle.bundle import open_bundle

    root = tmp_path / "b"
    shutil.copytree(planned, root)
    shutil.rmtree(root / "profile")
    write_profile(root, "ort", {2: 1.0, 4: 1.0})
    write_profile(root, "tensorrt", {2: 1.0, 4: 10.0})
    return open_bundle(root)


def test_a_missing_profile_names_the_command_that_makes_it(planned, tmp_path):
    from odelt.bundle.bundle import open_bundle

    root = tmp_path / "b"
    shutil.copytree(planned, root)                  # this device's ort profile only
    m = open_bundle(root)
    assert load_profile(m, backend="ort")["backend"] == "ort"
    with pytest.raises(ConfigError, match=rf"^{root}: no tensorrt profile for device .*; run `odelt-export profile "
                                          rf"{root} --backend tensorrt` on this device first$"):
        load_profile(m, backend="tensorrt")
    # asked by id for a profile of another backend: refused in one line too
    ort_id = device_id(device_description("ort"))
    with pytest.raises(ConfigError, match=r"expected a profile of backend tensorrt, found one of 'ort'; run "
                                          rf"`odelt-export profile {root} --backend tensorrt`"):
        load_profile(m, ort_id, backend="tensorrt")


def test_plan_refuses_a_backend_without_profile(planned, run_cli):
    line = run_cli(["plan", planned, "--budget-ms", "100", "--backend", "tensorrt"]).error_line()
    assert f"run `odelt-export profile {planned} --backend tensorrt` on this device first" in line


def test_the_stream_plans_from_its_own_backends_profile(two_profiles):
    from odelt.runtime.budget.stream import stream_for_bundle

    names = [spec.replace(":", "-") + f"-l{length}" for spec, length in PLANS]
    chosen = {}
    for backend in ("ort", "tensorrt"):
        with ExitStack() as stack:               # nothing is opened before a batch runs
            stream = stream_for_bundle(two_profiles, stack, 9.0, 1, quantile=0.5, control="open", backend=backend)
            chosen[backend] = (stream.current.candidate.name, stream.current.quantile_ms, stream.current.candidate.backend)
    assert chosen == {"ort": (names[3], 8.0, "ort"), "tensorrt": (names[0], 1.0, "tensorrt")}


def test_plan_plans_from_the_backend_it_is_given(two_profiles, run_cli):
    got = {}
    for backend in ("ort", "tensorrt"):
        res = run_cli(["plan", two_profiles.root, "--budget-ms", "9", "--quantile", "0.5", "--json",
                       "--backend", backend])
        assert res.code == 0, res.err
        got[backend] = json.loads(res.out)
    assert (got["ort"]["plan"], got["ort"]["predicted_ms"], got["ort"]["backend"]) == ("cosine-heun-4-l4", 8.0, "ort")
    assert (got["tensorrt"]["plan"], got["tensorrt"]["backend"]) == ("uniform-euler-1-l2", "tensorrt")


def test_the_triton_sampler_plans_from_its_engines_profile(two_profiles):
    """A repository of TensorRT graph models plans from the tensorrt profile (profile_backend)."""
    from odelt.serving.sampler_model import SamplerService

    for backend, plan in (("ort", "cosine-heun-4-l4"), ("tensorrt", "uniform-euler-1-l2")):
        service = SamplerService(two_profiles, None, "fp32", 8, None, backend)   # type: ignore[arg-type]
        (name, _), _, predicted = service._plan({"budget_ms": 9, "quantile": 0.5}, 1)
        assert name == plan
    assert SamplerService(two_profiles, None, "fp32", 8)._planner()[1]["backend"] == "ort"   # old repositories


@pytest.mark.parametrize("engines,backend", [("tensorrt", "tensorrt"), ("onnxruntime", "ort"), ("cpu", "ort")])
def test_a_repository_tells_its_sampler_which_profile_to_plan_from(planned, engines, backend):
    from odelt.bundle.bundle import open_bundle
    from odelt.serving.repository import RepoOptions, sampler_config

    m = open_bundle(planned)
    layout = m.default_layout()
    graphs = [m.graph(g) for g in sorted({g for chain in m.chains(layout).values() for g in chain})]
    text = sampler_config(m, layout, graphs, RepoOptions(engines=engines))
    block = next(b for b in text.split("parameters {")[1:] if 'key: "profile_backend"' in b)
    assert json.loads(block.split("string_value: ")[1].split("\n")[0]) == backend
