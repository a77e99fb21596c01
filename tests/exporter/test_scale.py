"""DiT-B/2 scale (random weights): export + verify. Minutes on CI's 2 cores, so `slow` (opt-in):
.venv/bin/python -m pytest -m slow tests/exporter/test_scale.py
(bench/export_scale.py measures time and memory for B/2 and XL/2)."""

import pytest
import torch

from odelt.exporter.export import ExportOptions, export_source
from odelt.exporter.verify import VerifyOptions, verify_bundle
from odelt.models import DiT, save_checkpoint
from odelt.models.config import PRESETS

pytestmark = pytest.mark.slow


def test_dit_b2_segments_export_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    model = DiT(PRESETS["DiT-B/2"]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    save_checkpoint(model, tmp_path / "b2.safetensors")
    del model
    man = export_source(str(tmp_path / "b2.safetensors"), tmp_path / "bundle", ExportOptions())
    assert man.graph_file("cond").external_data          # a B/2-size model keeps weights outside
    report = verify_bundle(tmp_path / "bundle", VerifyOptions(cases=1))
    assert report["ok"] and report["max_abs_err"] < 1e-4
    assert report["weight_bytes"]["segments"] <= 1.05 * report["param_bytes"]
    assert report["duplicate_initializers"] == 0
