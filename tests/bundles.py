"""Test-only helpers that write manifest.json behind the Bundle's back, as a user editing or
tampering with a bundle by hand would (the package itself only writes through Bundle.edit)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from odelt.bundle.bundle import MANIFEST, file_records


def hand_written_bundle(root: Path, data: dict) -> None:
    """Write a manifest for files already in `root`, listing every .onnx file as the export's."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.onnx"))
    (root / MANIFEST).write_text(json.dumps({**data, "files": file_records(root, files, "export")}))


def edit_by_hand(root: Path, change: Callable[[dict], None]) -> None:
    """Apply `change` to the parsed manifest and re-record the hashes of the files it lists."""
    data = json.loads((root / MANIFEST).read_text())
    change(data)
    owners = {rel: r["owner"] for rel, r in data["files"].items()}
    data["files"] = {rel: file_records(root, [rel], owner)[rel] for rel, owner in owners.items()}
    (root / MANIFEST).write_text(json.dumps(data))


def private_copy(src: Path, dst: Path) -> Path:
    """A copy of a session-scoped bundle (or demo folder) that one test may change."""
    shutil.copytree(src, dst)
    return dst


def flip_last_byte(path: Path) -> None:
    """Tamper with a file without changing its size (only its hash can tell)."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
