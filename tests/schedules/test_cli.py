import dataclasses
import json

import pytest

from odelt.cli import main
from odelt.models import save_checkpoint
from odelt.ode.schedule import load_schedule

from .conftest import TINY, tiny_dit


def run(argv, capsys):
    """main() with one-line error mapping: (exit code, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("method,solver,extra", [
    ("ld3", "ipndm", []),
    ("amed", "euler", []),
    ("ld3", "euler", ["--lengths", "auto", "--block-budget", "7"]),
])
def test_schedule_writes_an_artifact_the_runtime_validates(tmp_path, tiny_ckpt, capsys, method, solver, extra):
    out = tmp_path / "s.json"
    nfe = [] if extra else ["--nfe", "4"]
    code, _, err = run(["schedule", str(tiny_ckpt), "--method", method, "--solver", solver, *nfe, *extra,
                        "--iters", "4", "--pairs", "8", "--out", str(out)], capsys)
    assert code == 0, err
    s = load_schedule(out)                      # validation: monotone grid, NFE recount, sizes
    assert s.method == method and s.model_hash and s.provenance["n_train"] == 4
    assert s.t_grid[0] == 0.0 and s.t_grid[-1] == 1.0
    if method == "amed":
        assert s.scale is not None and s.t_mid is None and s.nfe == 4 and len(s.t_grid) == 5
    if extra:
        assert sum(s.lengths) <= 7 and set(s.lengths) <= set(TINY.lengths)


def test_evaluate_writes_table_and_pareto_plot(tmp_path, tiny_ckpt, capsys):
    sched = tmp_path / "ld3.json"
    assert run(["schedule", str(tiny_ckpt), "--nfe", "2", "--iters", "2", "--pairs", "8", "--out", str(sched)],
               capsys)[0] == 0
    table, plot = tmp_path / "t.json", tmp_path / "p.png"
    code, out, err = run(["evaluate", str(tiny_ckpt), "--schedules", str(sched), "uniform:euler:2",
                          "uniform:heun:1", "--held-out", "8", "--no-fd", "--out", str(table), "--plot", str(plot)],
                         capsys)
    assert code == 0, err
    rows = json.loads(table.read_text())["rows"]
    assert [r["block_evals"] for r in rows] == [8, 8, 8]
    assert all(r["rmse"] > 0 for r in rows)
    assert plot.stat().st_size > 1000 and "uniform:heun:1" in out


def _one_line_error(argv, capsys, *needles):
    code, _, err = run(argv, capsys)
    assert code == 1 and err.count("\n") == 1 and err.startswith("odelt-export: error:"), err
    for n in needles:
        assert n in err, err


def test_bad_inputs_are_one_line_errors(tmp_path, tiny_ckpt, capsys):
    src, out = str(tiny_ckpt), str(tmp_path / "x.json")
    _one_line_error(["schedule", src, "--nfe", "0", "--out", out], capsys, "--nfe: expected an integer in 1..1024", "found 0")
    _one_line_error(["schedule", src, "--solver", "dopri5", "--nfe", "4", "--out", out], capsys,
                    "cannot drive solver 'dopri5'")
    _one_line_error(["schedule", src, "--method", "amed", "--solver", "heun", "--nfe", "4", "--out", out], capsys,
                    "cannot drive solver 'heun'")
    _one_line_error(["schedule", src, "--nfe", "4", "--lengths", "auto", "--block-budget", "7", "--out", out],
                    capsys, "block budget must be >= smallest length 2 x NFE 4 = 8", "found 7")
    _one_line_error(["schedule", src, "--solver", "heun", "--nfe", "3", "--out", out], capsys, "multiple of 2")
    _one_line_error(["schedule", src, "--method", "nope", "--nfe", "2", "--out", out], capsys, "unknown method")
    assert not (tmp_path / "x.json").exists()


def test_per_step_dt_base_needs_shortcut_levels(tmp_path, capsys):
    path = tmp_path / "nodt.safetensors"
    save_checkpoint(tiny_dit(dataclasses.replace(TINY, ignore_dt=True)), path)
    _one_line_error(["schedule", str(path), "--nfe", "2", "--dt-base", "step", "--out", str(tmp_path / "s.json")],
                    capsys, "per-step dt_base needs a model with shortcut levels", "ignore_dt=True")
