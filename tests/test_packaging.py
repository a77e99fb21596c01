"""The Makefile's serving environment installs the same OpenVINO as pyproject's `openvino` extra (the
engine mode serves `--backend openvino` there, and a blob only loads on the version that built it)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_serve_env_pins_the_openvino_of_the_extra():
    extra = re.search(r'^openvino = \["([^"]+)"\]', (ROOT / "pyproject.toml").read_text(), re.M)
    make = (ROOT / "Makefile").read_text()
    pin = re.search(r"^OPENVINO := (\S+)$", make, re.M)
    assert extra and pin, "expected the openvino extra in pyproject.toml and OPENVINO := in the Makefile"
    assert pin.group(1) == extra.group(1) and "==" in pin.group(1)
    serve = make.split("$(SERVE)/.ready:")[1].split("\n\n")[0]
    assert "$(OPENVINO)" in serve and '"numpy<2"' in serve       # installed beside numpy < 2, torch never
    assert "torch" not in serve
