"""Precomputed modulation tables replace the conditioning graph when they fit the call."""

from __future__ import annotations

import shutil

import numpy as np

from odelt.bundle.bundle import open_bundle
from odelt.exporter.tables import add_table
from odelt.runtime.backends import open_backend
from odelt.ode.heuristics import resolve_schedule
from odelt.runtime.sampler import Sampler, make_noise


class NoCond:
    """Stands in for the conditioning session: fails if the runtime runs it."""

    def run_with_iobinding(self, binding):
        raise AssertionError("conditioning graph ran although a table covers this call")


def _bundle_with_class3_table(tiny_bundle, tmp_path):
    """A copy of the tiny bundle with a table for class 3 along shifted:euler:4; inputs of class 3."""
    root = tmp_path / "b"
    shutil.copytree(tiny_bundle.root, root)
    schedule = resolve_schedule("shifted:euler:4", 4)
    add_table(root, "shifted4_y3", list(schedule.t_grid[:-1]), list(schedule.dt_base), 4, y=3)
    return open_bundle(root), schedule, make_noise(0, 2, (1, 8, 8)), np.full(2, 3, np.int32)


def test_table_replaces_conditioning_graph(tiny_bundle, tmp_path):
    manifest, schedule, x0, y = _bundle_with_class3_table(tiny_bundle, tmp_path)
    with open_backend("ort", manifest) as be:
        plain, _ = Sampler(be, manifest, schedule, use_tables=False).sample(x0, y)
        be.sessions["cond"] = NoCond()
        tabled, _ = Sampler(be, manifest, schedule).sample(x0, y)
    np.testing.assert_allclose(tabled, plain, atol=1e-5)
    # Another class is not in the table: the conditioning graph runs (and NoCond says so).
    with open_backend("ort", manifest) as be:
        Sampler(be, manifest, schedule, use_tables=False).sample(x0, y)     # binds buffers at batch 2
        be.sessions["cond"] = NoCond()
        try:
            Sampler(be, manifest, schedule).sample(x0, np.full(2, 4, np.int32))
        except AssertionError as e:
            assert "conditioning graph ran" in str(e)
        else:
            raise AssertionError("class 4 is not in the table, so the conditioning graph had to run")


def test_guidance_on_host_does_not_use_a_class_table(tiny_bundle, tmp_path):
    # A guided call runs the class and the null class in one batch: one class's table cannot serve it.
    manifest, schedule, x0, y = _bundle_with_class3_table(tiny_bundle, tmp_path)
    with open_backend("ort", manifest) as be:
        plain, _ = Sampler(be, manifest, schedule, guidance_scale=2.0, use_tables=False).sample(x0, y)
        guided, _ = Sampler(be, manifest, schedule, guidance_scale=2.0).sample(x0, y)
    np.testing.assert_allclose(guided, plain, atol=1e-6)
