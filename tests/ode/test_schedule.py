"""Schedule artifacts: round trip, validation errors, heuristics, name resolution."""

from __future__ import annotations

import dataclasses
import json

import pytest

from odelt.errors import ScheduleError
from odelt.ode.heuristics import make_grid, resolve_schedule
from odelt.ode.schedule import Schedule, load_schedule, save_schedule
from odelt.ode.solvers import SOLVERS


def test_round_trip_and_atomic_write(tmp_path):
    s = resolve_schedule("cosine:amed:4", length=6)
    s = dataclasses.replace(s, t_mid=tuple((a + b) / 2 for a, b in zip(s.t_grid, s.t_grid[1:])),
                            scale=(1.0, 0.9, 1.1, 1.0), model_hash="abc123", provenance={"seed": 3})
    path = save_schedule(s, tmp_path / "sub" / "s.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["s.json"]    # no temp file left behind
    back = load_schedule(path)
    assert back == s
    assert json.loads(path.read_text())["solver"]["family"] == "fm_velocity"


def test_heuristic_grids_and_levels():
    for kind in ("uniform", "shifted", "cosine"):
        g = make_grid(kind, 8)
        assert g[0] == 0.0 and g[-1] == 1.0 and all(a < b for a, b in zip(g, g[1:]))
    shifted = make_grid("shifted", 8)
    assert shifted[1] - shifted[0] < 1 / 8 < shifted[-1] - shifted[-2]      # finer near noise
    s = resolve_schedule("uniform", length=4)
    assert (s.solver, s.steps, s.nfe, s.dt_base, s.lengths) == ("euler", 8, 8, (3,) * 8, (4,) * 8)
    assert resolve_schedule("uniform:heun:4", 4).dt_base == (7,) * 4
    assert resolve_schedule("uniform:heun:4", 4).nfe == 8
    d = resolve_schedule("uniform:dopri5", 8)
    assert (d.steps, d.nfe, d.dt_base, d.params["rtol"]) == (1, None, (0,), 1e-3)
    for name in SOLVERS:
        assert resolve_schedule(f"cosine:{name}:5", 2).validate()


def _bad(s: Schedule, **changes) -> str:
    with pytest.raises(ScheduleError) as e:
        dataclasses.replace(s, **changes).validate()
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_validation_errors_are_one_line():
    s = resolve_schedule("uniform:euler:4", 4)
    assert "strictly increasing" in _bad(s, t_grid=(0.0, 0.5, 0.4, 0.8, 1.0))
    assert "from 0 (noise) to 1" in _bad(s, t_grid=(0.1, 0.3, 0.5, 0.8, 1.0))
    assert "nfe is 5" in _bad(s, nfe=5)
    assert "lengths needs 4" in _bad(s, lengths=(4, 4))
    assert "dt_base must be" in _bad(s, dt_base=(3, 3, 3, 9))
    assert "unknown" in _bad(s, solver="rk4")
    assert "only with 'amed'" in _bad(s, t_mid=(0.1, 0.3, 0.6, 0.9))
    assert "order must be 1..4" in _bad(dataclasses.replace(s, solver="ipndm"), order=5)
    a = resolve_schedule("uniform:amed:2", 4)
    assert "strictly inside" in _bad(a, t_mid=(0.25, 0.5), scale=(1.0, 1.0))


def test_fits_bundle():
    s = dataclasses.replace(resolve_schedule("uniform", 4), model_hash="aaaa", name="learned")
    s.check_fits("aaaa", [2, 4, 6])
    s.check_fits(None, [4])
    with pytest.raises(ScheduleError, match="made for model aaaa, this bundle holds model bbbb"):
        s.check_fits("bbbb", [4])
    with pytest.raises(ScheduleError, match=r"lengths \[4\] that the bundle does not offer"):
        s.check_fits("aaaa", [2, 6])
    g = dataclasses.replace(s, guidance_scale=1.5)
    with pytest.raises(ScheduleError, match="guidance scale 1.5"):
        g.check_fits("aaaa", [4], guidance_scale=3.0)


def test_bad_files(tmp_path):
    with pytest.raises(ScheduleError, match="not found"):
        load_schedule(tmp_path / "missing.json")
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(ScheduleError, match="expected JSON"):
        load_schedule(p)
    p.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ScheduleError, match="expected format"):
        load_schedule(p)
    d = resolve_schedule("uniform", 4).to_dict()
    del d["t_grid"]
    p.write_text(json.dumps(d))
    with pytest.raises(ScheduleError, match="malformed"):
        load_schedule(p)
    d = resolve_schedule("uniform", 4).to_dict()
    d["nfe"] = 3
    p.write_text(json.dumps(d))
    with pytest.raises(ScheduleError, match=r"x.json: nfe is 3"):
        load_schedule(p)
    with pytest.raises(ScheduleError, match="STEPS must be an integer"):
        resolve_schedule("uniform:euler:many", 4)
    with pytest.raises(ScheduleError, match="unknown schedule kind"):
        resolve_schedule("zigzag", 4)
