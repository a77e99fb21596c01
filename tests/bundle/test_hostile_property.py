"""Property: a bundle whose manifest or side files were changed at random (types, ranges, paths,
references, sizes) makes every read-only command either run as before or exit 1 with one stderr
line -- never a traceback -- and no command changes a file of the bundle. Mutations that always
break the bundle (a path out of it, a reference to a missing graph) must exit 1."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from tests.bundles import private_copy  # noqa: E402

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)
HOSTILE_PATHS = ["/etc/passwd", "../outside.onnx", "segments/../../x.onnx", "~/x.onnx", "", "link/cond.onnx",
                 "segments/\x00.onnx"]
PATH_KEYS = {"file", "external_data", "dir", "report"}
# bounded for CI (about 20 s on the 2-core machine); ODELT_PROPERTY_EXAMPLES=2000 for a long hunt
EXAMPLES = int(os.environ.get("ODELT_PROPERTY_EXAMPLES", 150))


def _paths(node, prefix=()):
    """Every (path of keys/indexes) in a JSON tree, containers included."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _set(tree, path, value):
    node = tree
    for k in path[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value


_DELETE = object()


def _snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.name != "manifest.json"}


@pytest.fixture(scope="module")
def world(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("prop")
    b = private_copy(tiny_bundle, root / "b")
    (root / "outside").mkdir()
    (b / "link").symlink_to(root / "outside", target_is_directory=True)   # a folder that points out
    return {"b": b, "manifest": (b / "manifest.json").read_text(), "root": root}


def _commands(b: Path, out: Path) -> list[list]:
    return [["inspect", b],
            ["plan", b, "--budget-ms", "5", "--device", "prop"],
            ["generate", b, "-n", "1", "--batch", "1", "--schedule", "uniform:euler:1", "--no-tables",
             "--out", out / "g.png"],
            ["generate", b, "-n", "1", "--batch", "1", "--schedule", out / "s.json", "--out", out / "g2.png"]]


def _check(world, run_cli, out: Path, must_fail: bool, which: int) -> None:
    b = world["b"]
    before = _snapshot(b)
    argv = _commands(b, out)[which]
    res = run_cli(argv)
    assert "Traceback" not in res.err, res.err
    if must_fail or res.code != 0:
        res.error_line()                                  # exit 1, one line, no traceback
    assert _snapshot(b) == before, argv
    if res.code != 0:
        assert not (out / "g.png").exists() and not (out / "g2.png").exists()


@settings(max_examples=EXAMPLES, deadline=None, derandomize="ODELT_PROPERTY_EXAMPLES" not in os.environ,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_random_manifest_and_side_file_changes(world, run_cli, tmp_path_factory, data):
    b, manifest = world["b"], json.loads(world["manifest"])
    out = tmp_path_factory.mktemp("out")
    kind = data.draw(st.sampled_from(["value", "delete", "path", "record-path", "reference", "side-files"]))
    must_fail = kind in ("path", "record-path", "reference")
    if kind in ("value", "delete"):
        path = data.draw(st.sampled_from([p for p in _paths(manifest) if p]))
        _set(manifest, path, _DELETE if kind == "delete" else data.draw(JSON))
    elif kind == "path":
        where = data.draw(st.sampled_from([p for p in _paths(manifest) if p and p[-1] in PATH_KEYS]))
        _set(manifest, where, data.draw(st.sampled_from(HOSTILE_PATHS)))
    elif kind == "record-path":
        rel = data.draw(st.sampled_from(sorted(manifest["files"])))
        manifest["files"][data.draw(st.sampled_from(HOSTILE_PATHS))] = manifest["files"].pop(rel)
    elif kind == "reference":
        layout = data.draw(st.sampled_from(sorted(manifest["chains"])))
        n = data.draw(st.sampled_from(sorted(manifest["chains"][layout])))
        manifest["chains"][layout][n][0] = data.draw(st.sampled_from(["nosuch", "length_9", ""]))
    (b / "manifest.json").write_text(json.dumps(manifest))
    if kind == "side-files":
        (b / "quality.json").write_text(json.dumps(data.draw(JSON)))
        (b / "profile").mkdir(exist_ok=True)
        (b / "profile" / "prop.json").write_text(json.dumps(data.draw(JSON)))
        (out / "s.json").write_text(json.dumps(data.draw(JSON)))
        must_fail = True
    else:
        (out / "s.json").write_text("{}")
    try:       # side files: the commands that read them (plan: quality and profile; generate: a schedule)
        which = data.draw(st.sampled_from([1, 3] if kind == "side-files" else [0, 1, 2, 3]))
        _check(world, run_cli, out, must_fail, which)
    finally:
        (b / "manifest.json").write_text(world["manifest"])
        for p in (b / "quality.json", b / "profile"):
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        shutil.rmtree(out, ignore_errors=True)
