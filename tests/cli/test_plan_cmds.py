"""`plan --json` and `generate --log`: the same plan and the same prediction from the one
predictor, for the same bundle, profile, plan and quantile (a tiny real bundle, its measured
profile)."""

from __future__ import annotations

import json
import re

import pytest

from tests.serving.helpers import make_serving_bundle

KEYS = {"plan", "precision", "backend", "solver", "schedule", "call_lengths", "batch_size", "predicted_ms",
        "quantile", "rmse", "decoder", "budget_ms"}


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    return make_serving_bundle(tmp_path_factory.mktemp("plan") / "tiny")


@pytest.mark.parametrize("quantile,budget", [("0.9", "10000"), ("0.5", "10000")])
def test_plan_json_and_the_first_log_line_carry_the_same_prediction(planned, tmp_path, run_cli, quantile, budget):
    res = run_cli(["plan", planned, "--budget-ms", budget, "--batch", "1", "--quantile", quantile, "--json"])
    assert res.code == 0, res.err
    plan = json.loads(res.out)                       # stdout is one JSON object
    assert set(plan) == KEYS
    assert plan["quantile"] == float(quantile) and plan["backend"] == "ort" and plan["batch_size"] == 1
    log = tmp_path / "log.jsonl"
    res = run_cli(["generate", planned, "--budget-ms", budget, "--batch", "1", "-n", "2", "--quantile", quantile,
                   "--control", "open", "--log", log, "--out", tmp_path / "g.png"])
    assert res.code == 0, res.err
    first = json.loads(log.read_text().splitlines()[0])
    assert {k: first[k] for k in KEYS} == plan
    # generate prints the unrounded prediction at 2 decimals, plan --json rounds it to 4 first: at a
    # rounding boundary the two 2-decimal strings differ by one digit, so compare the numbers
    shown = re.search(rf"predicted ([0-9.]+) ms at quantile {re.escape(f'{float(quantile):g}')}", res.out)
    assert shown, res.out
    assert abs(float(shown.group(1)) - plan["predicted_ms"]) <= 0.005 + 1e-4


def test_quantile_is_a_checked_option(planned, run_cli):
    for argv in (["plan", planned, "--budget-ms", "10"], ["generate", planned, "--budget-ms", "10", "--out", "x.png"]):
        line = run_cli([*argv, "--quantile", "1.5"]).error_line()
        assert line.endswith("--quantile: expected a number in [0.5, 1), found 1.5")
