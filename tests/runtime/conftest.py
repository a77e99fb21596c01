"""A tiny model exported once per test session (both layouts; and one with guidance folded in)."""

from __future__ import annotations

import pytest

from tests.models_zoo import random_model


@pytest.fixture(scope="session")
def tiny_dit():
    pytest.importorskip("torch")
    return random_model("tiny", seed=0, std=0.3)


def _export(dit, path, **kw):
    from odelt.exporter.export import ExportOptions, export_bundle

    return export_bundle(dit, path, ExportOptions(**kw), source="test:tiny", source_hash="tinyhash")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_dit, tmp_path_factory):
    return _export(tiny_dit, tmp_path_factory.mktemp("rt") / "tiny", layouts=("segments", "per-length"))


@pytest.fixture(scope="session")
def tiny_cfg_bundle(tiny_dit, tmp_path_factory):
    return _export(tiny_dit, tmp_path_factory.mktemp("rt") / "tiny_cfg", layouts=("segments",), guidance=True)
