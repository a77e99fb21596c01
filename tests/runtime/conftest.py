"""A tiny model exported once per test session (both layouts; and one with guidance folded in)."""

from __future__ import annotations

import pytest

TINY = dict(input_size=8, in_channels=1, out_channels=1, hidden_size=32, depth=4, num_heads=2, depth_group=2,
            depth_min=2, num_classes=10)


@pytest.fixture(scope="session")
def tiny_dit():
    torch = pytest.importorskip("torch")
    from odelt.models import DiT, DiTConfig

    torch.manual_seed(0)
    dit = DiT(DiTConfig(**TINY)).eval()
    with torch.no_grad():   # upstream zero-inits the final layer: randomise it, or velocities are 0
        for p in dit.final.parameters():
            p.normal_(0.0, 0.3)
    return dit


def _export(dit, path, **kw):
    from odelt.exporter.export import ExportOptions, export_bundle

    return export_bundle(dit, path, ExportOptions(**kw), source="test:tiny", source_hash="tinyhash")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_dit, tmp_path_factory):
    return _export(tiny_dit, tmp_path_factory.mktemp("rt") / "tiny", layouts=("segments", "per-length"))


@pytest.fixture(scope="session")
def tiny_cfg_bundle(tiny_dit, tmp_path_factory):
    return _export(tiny_dit, tmp_path_factory.mktemp("rt") / "tiny_cfg", layouts=("segments",), guidance=True)
