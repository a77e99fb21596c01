"""Precomputed modulation tables replace the conditioning graph exactly."""

import numpy as np
import pytest

from odelt.errors import ScheduleError
from odelt.bundle import open_bundle, run_chain
from odelt.bundle.chain import load_table, table_feeds
from odelt.exporter.tables import add_table, build_table, torch_conditioner
from odelt.exporter.verify import cpu_session, verify_bundle
from odelt.models import load_checkpoint

T = [0.0, 0.25, 0.5, 0.75]


def _runner(man):
    sessions = {n: cpu_session(man.graph_path(n)) for n in man.graphs}
    return lambda g, f: dict(zip([o.name for o in sessions[g.name].get_outputs()], sessions[g.name].run(None, f)))


@pytest.fixture
def cfg_copy(cfg_bundle, tmp_path):
    import shutil

    shutil.copytree(cfg_bundle, tmp_path / "b")
    return tmp_path / "b"


def test_table_replaces_conditioning(cfg_copy, tiny_ckpt):
    entry = add_table(cfg_copy, "euler4_y3", T, [2] * 4, length=4, y=3)
    man = open_bundle(cfg_copy)                     # hashes still check out
    assert man.tables["euler4_y3"] == entry and entry["rows"] == 2 and entry["cfg"]
    table = load_table(man, "euler4_y3")
    assert table["mod0"].shape == (4, 2, 6 * 32) and table["final_mod"].shape == (4, 2, 64)
    # the table agrees with the PyTorch model's conditioning
    ref = build_table(man, T, [2] * 4, 4, 3, torch_conditioner(load_checkpoint(str(tiny_ckpt)), man))
    assert max(np.abs(ref[k] - table[k]).max() for k in table) < 1e-5
    run, b = _runner(man), 3
    rng = np.random.default_rng(0)
    for step in (0, 3):
        feed = {"x": rng.standard_normal((b, 1, 8, 8)).astype(np.float32), "t": np.full(b, T[step], np.float32),
                "dt_base": np.full(b, 2, np.int32), "y": np.full(b, 3, np.int32),
                "cfg_scale": np.full(b, 2.0, np.float32)}
        with_cond = run_chain(man, 4, feed, run)
        with_table = run_chain(man, 4, {**feed, **table_feeds(table, step, b)}, run)
        assert np.abs(with_cond - with_table).max() < 1e-6
    assert verify_bundle(cfg_copy)["ok"]              # the bundle stays valid


def test_unconditional_table_uses_null_class(tiny_bundle, tmp_path):
    import shutil

    shutil.copytree(tiny_bundle, tmp_path / "b")
    man = open_bundle(tmp_path / "b")
    table = build_table(man, [0.5], [7], 2, None)
    null = build_table(man, [0.5], [7], 2, man.config.num_classes)
    assert table["mod1"].shape == (1, 1, 192)
    assert all(np.array_equal(table[k], null[k]) for k in table)


@pytest.mark.parametrize("kwargs,msg", [
    ({"t": [0.5, 1.5], "dt_base": [1, 1]}, "t must lie in"),
    ({"t": [0.5], "dt_base": [9]}, "dt_base must lie"),
    ({"t": [0.5, 0.6], "dt_base": [1]}, "equal-length"),
    ({"length": 3}, "not exported"),
    ({"y": 11}, "class must be"),
])
def test_bad_schedules(tiny_bundle, kwargs, msg):
    man = open_bundle(tiny_bundle)
    args = {"t": [0.5], "dt_base": [1], "length": 2, "y": 0, **kwargs}
    with pytest.raises(ScheduleError, match=msg):
        build_table(man, args["t"], args["dt_base"], args["length"], args["y"])
