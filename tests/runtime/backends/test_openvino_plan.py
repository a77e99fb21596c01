"""The backend as an axis of the plan: ONNX Runtime and OpenVINO sets both profiled here; `plan`
and `generate --budget-ms` choose schedule x precision x backend and run the backend they name."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("openvino", reason="OpenVINO (the `openvino` extra) is not installed")

from odelt.bundle.bundle import open_bundle  # noqa: E402
from odelt.runtime.backends.openvino import OvBackend, runs_as  # noqa: E402
from odelt.runtime.budget.axes import ByBackend, across_backends, load_profiles  # noqa: E402
from odelt.runtime.budget.planner import choose  # noqa: E402
from odelt.runtime.budget.plans import load_candidates  # noqa: E402
from odelt.runtime.budget.predict import QuantilePredictor  # noqa: E402
from odelt.runtime.generate import GenerateOptions, generate_from_bundle  # noqa: E402
from tests.openvino_bundle import built_bundle  # noqa: E402

# quality-table errors (inputs of the planner: the table is measured on the host elsewhere)
ERRORS = {("euler2", "fp32"): 0.20, ("euler2", "int8"): 0.21, ("euler4", "fp32"): 0.10, ("euler4", "int8"): 0.11}


@pytest.fixture(scope="module")
def planned(ov_src, tmp_path_factory):
    from odelt.ode.heuristics import heuristic_schedule
    from odelt.runtime.budget.profile import profile_bundle, save_profile
    from odelt.schedules.quality import install_schedules, write_quality

    root = tmp_path_factory.mktemp("ov-plan") / "bundle"
    shutil.copytree(ov_src, root)
    m = open_bundle(root)
    save_profile(m, profile_bundle(m, "ort", (1,), ("fp32", "int8"), repeats=3, time_graphs=False))
    save_profile(m, profile_bundle(m, "openvino", (1,), ("fp32", "bf16", "int8"), repeats=3))
    schedules = install_schedules(m, [heuristic_schedule("uniform", "euler", k, 4) for k in (2, 4)])
    rows = []
    for name, s in schedules.items():
        for p in ("fp32", "int8"):
            rows.append({"name": f"{name}-{p}", "schedule": name, "solver": s.solver, "precision": p,
                         "error": ERRORS[(f"euler{s.nfe}", p)], "fd": None, "call_lengths": list(s.call_lengths())})
    write_quality(m, rows, 4, 0, teacher="none: made-up errors (planner inputs)")
    return open_bundle(root)


@pytest.fixture(scope="module")
def ov_src(tmp_path_factory):
    return built_bundle(tmp_path_factory)


def _choice(m, budget):
    profiles = load_profiles(m)
    cands = across_backends(load_candidates(m), profiles, m)
    return choose(cands, budget, predictor=ByBackend({b: QuantilePredictor(p, 1) for b, p in profiles.items()})), cands


def _bf16_runs(m) -> bool:
    return runs_as(m.engine_set("openvino-cpu-bf16")) == "bf16"


def test_candidates_span_backends_and_the_faster_equal_plan_wins(planned):
    choice, cands = _choice(planned, 1e6)
    backends = {(c.backend, c.precision) for c in cands}
    # the bf16 set is offered only where it runs bf16 (a CPU with BF16); here or not, never under a false name
    assert backends == {("ort", "fp32"), ("ort", "int8"), ("openvino", "fp32"), ("openvino", "int8"),
                        *([("openvino", "bf16")] if _bf16_runs(planned) else [])}
    bf16 = [c for c in cands if c.precision == "bf16"]
    fp32 = {c.schedule: c.error for c in cands if c.precision == "fp32"}
    # bf16 plans: the FP32 rows with the set's guard error composed (>= the FP32 error)
    assert all(c.error >= fp32[c.schedule] and c.name.endswith("@openvino") for c in bf16)
    best = min(c.error for c in cands)
    tied = [(c, ms) for c, ms in choice.table if c.error == best]
    assert {c.backend for c, _ in tied} == {"ort", "openvino"}   # the same plan on both backends
    assert choice.candidate == min(tied, key=lambda cm: cm[1])[0]    # the faster of the tied plans
    # each row predicted from its own backend's profile
    for c, ms in choice.table:
        prof = load_profiles(planned)[c.backend]
        assert ms == pytest.approx(QuantilePredictor(prof, 1).candidate(c))


def _with_bf16_record(m, tmp_path, inference_precision: str):
    """A copy of the bundle whose bf16 set's record says OpenVINO compiled it to `inference_precision`:
    a FAKE record standing in for a build on a CPU with BF16 ("bf16") or without ("f32"), which
    this machine may not be."""
    import json

    root = tmp_path / inference_precision
    shutil.copytree(m.root, root)
    data = json.loads((root / "manifest.json").read_text())
    data["engines"]["openvino-cpu-bf16"]["built"]["inference_precision"] = inference_precision
    (root / "manifest.json").write_text(json.dumps(data))
    return open_bundle(root)


@pytest.mark.parametrize("runs", ["bf16", "f32"])
def test_a_bf16_set_is_offered_only_where_it_runs_bf16(planned, tmp_path, runs):
    m = _with_bf16_record(planned, tmp_path, runs)
    _, cands = _choice(m, 1e6)
    names = [c.name for c in cands]
    assert len(names) == len(set(names))                           # no plan offered twice
    offered = [c for c in cands if c.precision == "bf16"]
    if runs == "bf16":
        assert offered and all("bf16" in c.name and c.backend == "openvino" for c in offered)
    else:   # runs f32: the same kernels as the openvino fp32 set, not offered again under any name
        assert not offered and not [n for n in names if "bf16" in n]
        assert {c.precision for c in cands if c.backend == "openvino"} == {"fp32", "int8"}


def test_plan_cli_names_the_backend(planned, run_cli):
    r = run_cli(["plan", planned.root, "--budget-ms", "100000"])
    assert r.code == 0, r.err
    assert "backend" in r.out.splitlines()[0] and "@openvino" in r.out
    chosen = next(line for line in r.out.splitlines() if line.startswith("chosen: "))
    assert "backend ort)" in chosen or "backend openvino)" in chosen
    only = run_cli(["plan", planned.root, "--budget-ms", "100000", "--backend", "openvino"])
    assert only.code == 0 and "backend openvino)" in only.out and "backend ort)" not in only.out


def test_generate_runs_the_backend_the_plan_names(planned, monkeypatch):
    opened = []
    enter = OvBackend.__enter__

    def spy(self):
        opened.append(self.precision)
        return enter(self)

    monkeypatch.setattr(OvBackend, "__enter__", spy)
    res = generate_from_bundle(planned.root, GenerateOptions(n=2, batch=1, budget_ms=1e6, threads=1,
                                                             plan_backends=("openvino",), control="open"))
    assert res.plan.candidate.backend == "openvino" and opened == [res.plan.candidate.precision]
    opened.clear()
    res = generate_from_bundle(planned.root, GenerateOptions(n=2, batch=1, budget_ms=1e6, threads=1,
                                                             plan_backends=("ort",), control="open"))
    assert res.plan.candidate.backend == "ort" and opened == []


def test_generate_cli_reports_the_backend(planned, run_cli, tmp_path):
    r = run_cli(["generate", planned.root, "-n", "1", "--batch", "1", "--threads", "1", "--budget-ms", "1e6",
                 "--backend", "openvino", "--out", tmp_path / "g.png"])
    assert r.code == 0, r.err
    assert "@openvino for budget" in r.out and "backend openvino" in r.out


def test_profile_cli_times_the_openvino_sets(ov_src, run_cli, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(ov_src, root)
    r = run_cli(["profile", root, "--backend", "openvino", "--batch", "1", "--repeats", "2"])
    assert r.code == 0, r.err
    timed = sorted(line.split()[0] for line in r.out.splitlines() if "one call" in line)
    assert timed == ["bf16", "fp32", "int8"]                 # the precisions of its sets, not the bundle's variants
    bf16 = next(line for line in r.out.splitlines() if line.startswith("bf16"))
    assert ("runs fp32; plans skip it" in bf16) == (not _bf16_runs(open_bundle(root)))
    assert load_profiles(open_bundle(root), ("openvino",))["openvino"]["device"]["openvino"]
