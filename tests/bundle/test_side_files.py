"""Side files (quality.json, profile/, schedules/) are written by the bundle's owner: atomically,
under its lock, never outside the bundle, and without touching the manifest's file records."""

from __future__ import annotations

import json

import pytest

from odelt.bundle.bundle import MANIFEST, open_bundle
from odelt.errors import BundleError

from tests.bundles import private_copy


def test_a_side_file_is_written_inside_the_bundle_and_not_recorded(tiny_bundle, tmp_path):
    root = private_copy(tiny_bundle, tmp_path / "b")
    manifest_before = (root / MANIFEST).read_bytes()
    bundle = open_bundle(root)
    path = bundle.write_side("quality.json", {"rows": []})
    assert path == root / "quality.json" and json.loads(path.read_text()) == {"rows": []}
    assert (root / MANIFEST).read_bytes() == manifest_before
    assert not list(root.glob("*.tmp*"))                       # no temporary left behind
    open_bundle(root, verify=True)                              # side files are not artifacts


@pytest.mark.parametrize("rel", ["../outside.json", "/tmp/abs.json", MANIFEST, ""])
def test_a_side_file_outside_the_bundle_or_over_its_manifest_is_refused(tiny_bundle, tmp_path, rel):
    root = private_copy(tiny_bundle, tmp_path / "b")
    with pytest.raises(BundleError, match="expected a path inside the bundle"):
        open_bundle(root).write_side(rel, {})
    assert not (tmp_path / "outside.json").exists()
