"""The Bundle: the single owner of manifest.json. Locked, atomic updates that never lose another
process's entry; file records checked cheaply on open and fully on verify; stale work folders."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import subprocess

import numpy as np
import pytest

from odelt.cli import main
from odelt.errors import BundleError
from odelt.bundle import bundle as bundle_mod
from odelt.bundle.bundle import open_bundle
from tests.bundles import flip_last_byte, private_copy


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    return private_copy(tiny_bundle, tmp_path / "b")


def _add_tables(root: str, prefix: str, n: int) -> None:
    """Worker: n table entries, each owning a small file, recorded one update at a time."""
    b = open_bundle(root)
    for i in range(n):
        rel = f"tables/{prefix}{i}.npz"
        (b.root / "tables").mkdir(exist_ok=True)
        np.savez(b.root / rel, x=np.zeros((1, 1, 1), np.float32))
        b.update("tables", f"{prefix}{i}", {"file": rel}, files=[rel])


def test_concurrent_updates_from_two_processes_are_all_kept(bundle):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_add_tables, args=(str(bundle), p, 15)) for p in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    b = open_bundle(bundle, verify=True)
    want = {f"{p}{i}" for p in "ab" for i in range(15)}
    assert set(b.tables) == want
    assert {rel for rel, r in b.files.items() if r["owner"].startswith("tables/")} == \
        {f"tables/{k}.npz" for k in want}


def test_replacing_an_entry_drops_the_files_it_owned(bundle):
    b = open_bundle(bundle)
    (bundle / "tables").mkdir()
    for name in ("one.npz", "two.npz"):
        np.savez(bundle / "tables" / name, x=np.zeros((1, 1, 1), np.float32))
    b.update("tables", "t", {"file": "tables/one.npz"}, files=["tables/one.npz"])
    b.update("tables", "t", {"file": "tables/two.npz"}, files=["tables/two.npz"])
    assert "tables/one.npz" not in b.files and "tables/two.npz" in b.files
    b.update("tables", "t", None)
    assert "t" not in b.tables and "tables/two.npz" not in b.files


def test_open_hashes_nothing_unless_a_file_time_moved(bundle, monkeypatch):
    calls = []
    real = bundle_mod.file_hash
    monkeypatch.setattr(bundle_mod, "file_hash", lambda p: calls.append(p) or real(p))
    open_bundle(bundle)
    assert calls == []                                        # size + mtime only
    head = bundle / "segments" / "head.onnx"
    os.utime(head, ns=(1, 1))                                 # same bytes, new time (a copy)
    open_bundle(bundle)
    assert calls == [head]
    n = len(open_bundle(bundle).files)
    calls.clear()
    open_bundle(bundle, verify=True)
    assert len(calls) == n                                    # verify hashes every listed file


def test_modified_file_of_the_same_size_is_caught(bundle):
    head = bundle / "segments" / "head.onnx"
    flip_last_byte(head)
    with pytest.raises(BundleError, match="segments/head.onnx was modified: hash"):
        open_bundle(bundle)


def test_build_then_profile_then_build_keeps_the_bundle_usable(bundle, capsys):
    """The sequence that used to break a bundle for good: profiles are not hashed."""
    from odelt.runtime.budget.profile import save_profile

    assert _cli(["build", str(bundle), "--backend", "ort"], capsys)[0] == 0
    b = open_bundle(bundle)
    save_profile(b, {"device_id": "dev", "format": "x", "n": 1})
    save_profile(b, {"device_id": "dev", "format": "x", "n": 2})   # rewritten by a second profile
    assert _cli(["build", str(bundle), "--backend", "ort", "--force"], capsys)[0] == 0
    assert _cli(["inspect", str(bundle)], capsys)[0] == 0
    assert "engines/ort-fp32/head.onnx" in open_bundle(bundle, verify=True).files


def test_inspect_refuses_a_graph_no_entry_lists(bundle, capsys):
    shutil.copy(bundle / "segments" / "head.onnx", bundle / "segments" / "extra.onnx")
    open_bundle(bundle)                                        # ordinary loads do not scan the folder
    code, err = _cli(["inspect", str(bundle)], capsys)
    assert code == 1 and "segments/extra.onnx is not listed in manifest.json" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_stale_work_folders_of_dead_processes_are_removed_by_the_next_write(bundle):
    dead = subprocess.Popen(["true"])
    dead.wait()
    mine = bundle / f".int8.partial-{os.getpid()}"             # a live process's folder stays
    stale = [bundle / f".int8.partial-{dead.pid}", bundle / "engines" / f".ort-fp32.partial-{dead.pid}"]
    for p in [mine, *stale]:
        p.mkdir(parents=True)
    open_bundle(bundle).update("tables", "t", None)
    assert mine.is_dir() and not any(p.exists() for p in stale)


def test_manifest_from_before_file_records_still_opens(bundle):
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    data["files"] = {rel: r["sha256"] for rel, r in data["files"].items()}
    path.write_text(json.dumps(data))
    assert open_bundle(bundle).lengths


def test_unknown_section_is_refused(bundle):
    with pytest.raises(BundleError, match="unknown manifest section 'graphs'"):
        open_bundle(bundle).update("graphs", "x", {})


def _cli(argv, capsys):
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err
