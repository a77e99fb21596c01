"""`odelt-export quality` and `odelt-export tables` on a tiny model exported from a checkpoint, as a
user's own model would be (the walk-through in README.md runs them on the builtin models)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from odelt.bundle.bundle import open_bundle
from odelt.models import save_checkpoint
from odelt.ode.heuristics import resolve_schedule
from odelt.ode.seeds import make_noise
from odelt.runtime.backends import open_backend
from odelt.runtime.sampler import Sampler

from tests.models_zoo import random_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from odelt.exporter.export import ExportOptions, export_source

    root = tmp_path_factory.mktemp("stages")
    save_checkpoint(random_model("tiny", std=0.3), root / "tiny.safetensors")
    export_source(str(root / "tiny.safetensors"), root / "bundle", ExportOptions(layouts=("segments", "per-length")))
    return root


@pytest.fixture
def bundle(exported, tmp_path):
    shutil.copytree(exported, tmp_path / "s")
    return tmp_path / "s" / "bundle"


def test_quality_writes_the_table_plan_reads(bundle, run_cli):
    assert run_cli(["profile", bundle, "--batch", "1", "--repeats", "2"]).code == 0
    assert run_cli(["plan", bundle, "--budget-ms", "50"]).error_line().endswith(f"`odelt-export quality {bundle}`")
    res = run_cli(["quality", bundle, "--schedules", "uniform:euler:2", "--schedules", "uniform:euler:4",
                   "--held-out", "4"])
    assert res.code == 0, res.err
    data = json.loads((bundle / "quality.json").read_text())
    lengths = open_bundle(bundle).lengths
    assert {r["name"] for r in data["rows"]} == {f"uniform-euler-{k}-l{n}-fp32" for k in (2, 4) for n in lengths}
    assert data["held_out"] == {"n": 4, "seed": 0, "teacher": "euler-128-full-length"}
    assert all(r["call_lengths"] == [int(r["schedule"].split("-l")[1])] * int(r["schedule"].split("-")[2])
               for r in data["rows"])
    assert (bundle / "schedules" / "uniform-euler-4-l4.json").is_file()
    assert run_cli(["plan", bundle, "--budget-ms", "1000"]).code == 0


def test_quality_defaults_the_bundles_schedules_plus_heuristics(bundle, run_cli):
    from odelt.ode.schedule import save_schedule

    manifest = open_bundle(bundle)
    own = resolve_schedule("shifted:euler:3", 4)
    (bundle / "schedules").mkdir()
    save_schedule(own, bundle / "schedules" / "mine.json")
    ckpt = bundle.parent / "tiny.safetensors"
    assert run_cli(["quality", bundle, "--held-out", "2", "--seed", "1", "--model", ckpt]).code == 0
    names = {r["schedule"] for r in json.loads((bundle / "quality.json").read_text())["rows"]}
    heuristics = {f"uniform-euler-{k}-l{n}" for k in (1, 2, 4, 8) for n in manifest.lengths}
    assert names == heuristics | {"shifted-euler-3-l4"}


def test_quality_refuses_in_one_line(bundle, run_cli):
    assert "--precision int8" in run_cli(["quality", bundle, "--precision", "int8"]).error_line()
    assert "--model SOURCE" in run_cli(["quality", bundle, "--model", bundle / "nope.pt"]).error_line()
    assert "no decoder stage" in run_cli(["quality", bundle, "--decoder", "sd", "--held-out", "2"]).error_line()
    (bundle / "quality.json").write_text("{}")
    assert "--force" in run_cli(["quality", bundle]).error_line()
    assert run_cli(["quality", bundle, "--schedules", "uniform:euler:1", "--held-out", "2", "--force"]).code == 0
    assert len(json.loads((bundle / "quality.json").read_text())["rows"]) == len(open_bundle(bundle).lengths)


class NoCond:
    """Stands in for the conditioning session: fails if the runtime runs it."""

    def run_with_iobinding(self, binding):
        raise AssertionError("conditioning graph ran although a table covers this call")


def test_tables_replace_the_conditioning_graph_for_every_step_of_the_schedule(bundle, run_cli):
    res = run_cli(["tables", bundle, "--schedule", "shifted:heun:3", "--class", "3", "--class", "5"])
    assert res.code == 0, res.err
    manifest = open_bundle(bundle)
    full = max(manifest.lengths)
    assert sorted(manifest.tables) == [f"shifted-heun-3-l{full}-y3", f"shifted-heun-3-l{full}-y5"]
    assert len(manifest.tables[f"shifted-heun-3-l{full}-y3"]["t"]) == 4     # heun calls at both ends of each of its 3 steps
    schedule = resolve_schedule("shifted:heun:3", full)
    x0, y = make_noise(0, 2, (1, 8, 8)), np.full(2, 5, np.int32)
    with open_backend("ort", manifest, layout="segments") as be:
        plain, _ = Sampler(be, manifest, schedule, use_tables=False).sample(x0, y)
        be.sessions["cond"] = NoCond()
        tabled, _ = Sampler(be, manifest, schedule).sample(x0, y)
    np.testing.assert_allclose(tabled, plain, atol=1e-5)


def test_tables_default_to_every_class_and_refuse_in_one_line(bundle, run_cli):
    assert run_cli(["tables", bundle, "--schedule", "uniform:euler:2"]).code == 0
    assert len(open_bundle(bundle).tables) == 10
    assert "host" in run_cli(["tables", bundle, "--schedule", "uniform:euler:2", "--guidance-scale", "2"]).error_line()
    assert "adaptive" in run_cli(["tables", bundle, "--schedule", "uniform:dopri5"]).error_line()
    assert "class must be" in run_cli(["tables", bundle, "--schedule", "uniform:euler:2", "--class", "11"]).error_line()
