"""Hostile files: no loader runs code from a file it reads.

Each payload below creates a marker file when loaded by the standard unpickler (checked first, so a
test cannot pass because its payload was inert); through `export` and `info` it must be refused with
one line naming the refused global, before anything runs: no marker, no bundle folder.
"""

from __future__ import annotations

import builtins
import functools
import os
import pickle
import subprocess
import sys
import time
import types
from collections import OrderedDict, namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

from odelt.cli import main
from odelt.errors import BundleError, CheckpointError, ScheduleError
from odelt.models import load_checkpoint
from odelt.runtime.sampler import Tables
from odelt.schedules.problem import NOISE_TAG, TEACHER_STEPS, make_pairs
from tests.models.test_dit import tiny_model


class Call:
    """Pickles as `fn(*args)`: how a file makes an unpickler call something. Callable itself, so a
    Call can be the function of another Call (a chain)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args

    def __call__(self):  # pragma: no cover - only pickle's "is it callable" check sees it
        raise AssertionError


def _touch_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _numpy_load_payload(marker: Path):
    inner = marker.parent / "inner.pkl"                    # numpy.load(allow_pickle=True) runs a pickle
    inner.write_bytes(pickle.dumps(Call(builtins.exec, _touch_code(marker))))
    return Call(np.load, str(inner), None, True)


PAYLOADS = {   # name -> (payload for a marker path, the global the loader must name)
    "exec": (lambda m: Call(builtins.exec, _touch_code(m)), "builtins.exec"),
    "eval": (lambda m: Call(builtins.eval, _touch_code(m)), "builtins.eval"),
    "os.system": (lambda m: Call(os.system, f"touch {m}"), f"{os.system.__module__}.system"),
    "subprocess.Popen": (lambda m: Call(subprocess.Popen, ["touch", str(m)]), "subprocess.Popen"),
    "getattr chain": (lambda m: Call(Call(getattr, Call(builtins.__import__, "os"), "system"), f"touch {m}"),
                      "builtins.getattr"),
    "functools.partial": (lambda m: Call(functools.partial(os.system, f"touch {m}")), "functools.partial"),
    "numpy.load": (_numpy_load_payload, "numpy.load"),
}


def _upstream_tree(jax_small) -> dict:
    with open(jax_small[0], "rb") as f:
        return pickle.load(f)


def _hostile_files(name: str, tmp_path: Path, jax_small) -> tuple[dict[str, bytes], str, Path]:
    """{variant: pickle bytes}: the bare payload, and hidden inside an otherwise valid checkpoint."""
    make, refused = PAYLOADS[name]
    marker = tmp_path / "marker"
    payload = make(marker)
    tree = _upstream_tree(jax_small)
    tree["params"]["zz_extra"] = payload                   # after every real weight
    return {"bare": pickle.dumps(payload), "in a checkpoint": pickle.dumps(tree)}, refused, marker


def _wait_for(path: Path, seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds                      # Popen's child runs asynchronously
    while time.monotonic() < end and not path.exists():
        time.sleep(0.02)
    return path.exists()


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_payloads_are_live_under_plain_pickle(name, tmp_path, jax_small):
    files, _, marker = _hostile_files(name, tmp_path, jax_small)
    pickle.loads(files["bare"])
    assert _wait_for(marker), f"the {name} payload did not run under pickle.loads: the test would prove nothing"


def _run_cli(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_export_and_info_refuse_payloads_before_running_them(name, tmp_path, capsys, jax_small):
    files, refused, marker = _hostile_files(name, tmp_path, jax_small)
    config = str(jax_small[0].parent / "meta.json")
    for variant, data in files.items():
        path = tmp_path / f"{variant.replace(' ', '_')}.pkl"
        path.write_bytes(data)
        out = tmp_path / f"bundle_{path.stem}"
        for argv in (["export", str(path), "--config", config, "--out", str(out)],
                     ["info", str(path), "--config", config]):
            code, err = _run_cli(argv, capsys)
            assert code == 1, (variant, argv[0])
            assert err.count("\n") == 1 and err.startswith("odelt-export: error: "), err
            assert f"refusing to unpickle global {refused}:" in err, err
            assert not _wait_for(marker, 0.05), f"{name} ({variant}) ran during {argv[0]}"
            assert not out.exists()


def _stack_global(module: str, name: str) -> bytes:
    """Protocol 4 by hand: push module and name, STACK_GLOBAL, stop (a bare global lookup)."""
    def text(s: str) -> bytes:
        raw = s.encode()
        return b"\x8c" + bytes([len(raw)]) + raw
    return b"\x80\x04" + text(module) + text(name) + b"\x93."


@pytest.mark.parametrize("module, name", [
    ("numpy", "ndarray.__reduce__"),          # protocol 4 resolves dotted names attribute by attribute
    ("numpy._core.multiarray", "_reconstruct.__globals__"),
    ("jax", "numpy.load"),                    # stand-ins are for plain names only
    ("flax_evil", "State"),                   # not the flax package
    ("copyreg", "_reconstructor"),
    ("builtins", "object"),
    ("numpy", "load"),
])
def test_lookups_outside_the_allowlist_are_refused(module, name, tmp_path, jax_small):
    path = tmp_path / "g.pkl"
    path.write_bytes(_stack_global(module, name))
    with pytest.raises(CheckpointError, match=rf"refusing to unpickle global {module}\.{name}:"):
        load_checkpoint(path, jax_small[1])


def test_codecs_encode_is_latin1_only(tmp_path, jax_small):
    path = tmp_path / "c.pkl"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(CheckpointError, match=r"refusing _codecs.encode\(str, 'rot13'\)"):
        load_checkpoint(path, jax_small[1])


def _reference_weights(jax_small):
    return load_checkpoint(jax_small[0], jax_small[1]).state_dict()


@pytest.mark.parametrize("protocol", [2, 3, 5])
def test_other_protocols_load_the_same_weights(protocol, tmp_path, jax_small):
    # Protocol 2 spells bytes as _codecs.encode(..., 'latin1') and builtins as __builtin__;
    # protocol 5 rebuilds arrays with numpy's _frombuffer. OrderedDict and a set ride along.
    tree = _upstream_tree(jax_small)
    tree["params"] = OrderedDict(tree["params"])
    tree["tags"] = {"ema", "fp32"}
    path = tmp_path / f"p{protocol}.pkl"
    path.write_bytes(pickle.dumps(tree, protocol=protocol))
    got, ref = load_checkpoint(path, jax_small[1]).state_dict(), _reference_weights(jax_small)
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_flax_optax_stand_ins_never_call_what_they_hold(tmp_path, capsys, jax_small):
    # A stand-in module named `optax` whose function would create the marker: the real loader turns
    # optax.touch into an inert stand-in, so the checkpoint exports and nothing runs.
    marker = tmp_path / "marker"
    fake = types.ModuleType("optax")
    fake.touch = lambda path: Path(path).touch()
    fake.touch.__module__, fake.touch.__qualname__ = "optax", "touch"
    state = namedtuple("ScaleByAdamState", "count mu nu")
    state.__module__ = "optax"
    fake.ScaleByAdamState = state
    sys.modules["optax"] = fake
    try:
        tree = _upstream_tree(jax_small)
        tree["opt_state"] = (state(np.int32(3), Call(fake.touch, str(marker)), tree["params"]),)
        data = pickle.dumps(tree)
        pickle.loads(data)                                # live under the standard unpickler
        assert marker.exists()
        marker.unlink()
    finally:
        del sys.modules["optax"]
    path = tmp_path / "opt.pkl"
    path.write_bytes(data)
    main(["info", str(path), "--config", str(jax_small[0].parent / "meta.json")])
    assert "depth 4" in capsys.readouterr().out
    assert not marker.exists()


class Reduce:
    """Pickles as fn(*args) followed by BUILD with `state`: what numpy's own pickles look like."""

    def __init__(self, fn, args, state=None):
        self.reduced = (fn, args) if state is None else (fn, args, state)

    def __reduce__(self):
        return self.reduced


_RECONSTRUCT = np._core.multiarray._reconstruct
_POINTER = (0x41414141).to_bytes(8, "little")              # 8 file bytes a forged object field points with

FORGED = {   # numpy's own globals only (those a naive allowlist admits), each turning bytes into a pointer
    "ndarray over bytes": Reduce(np.ndarray, ((1,), np.dtype("O"), _POINTER)),
    "dtype state with an object field": Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b"), (
        1, (1,), Reduce(np.dtype, ("V8", False, True), (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0)),
        False, _POINTER)),
}


@pytest.mark.parametrize("name", sorted(FORGED))
def test_numpy_pointer_forgeries_are_refused(name, tmp_path, jax_small):
    path = tmp_path / "f.pkl"
    path.write_bytes(pickle.dumps(FORGED[name]))
    # Live: the standard unpickler crashes the interpreter reading the forged pointer.
    probe = f"import pickle; print(pickle.load(open({str(path)!r}, 'rb')))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == -11
    with pytest.raises(CheckpointError, match=r"refusing numpy dtype dtype\('(O|V8)'\)"):
        load_checkpoint(path, jax_small[1])


def test_numpy_ndarray_is_never_called(tmp_path, jax_small):
    path = tmp_path / "n.pkl"
    path.write_bytes(pickle.dumps(Reduce(np.ndarray, ((1,), np.dtype("i8"), _POINTER))))
    with pytest.raises(CheckpointError, match=r"refusing to call numpy.ndarray"):
        load_checkpoint(path, jax_small[1])


@pytest.mark.parametrize("state, why", [
    ((3, "<", None, None, None, -1, -1, 0x1F), "not the dtype's own"),        # object flags on an int64
    ((3, "<", None, ("a",), {"a": ("x", 0)}, 8, 1, 0), "not the dtype's own"),  # fields on a plain dtype
])
def test_dtype_states_other_than_their_own_are_refused(state, why, tmp_path, jax_small):
    array = Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b"),
                   (1, (1,), Reduce(np.dtype, ("i8", False, True), state), False, _POINTER))
    path = tmp_path / "d.pkl"
    path.write_bytes(pickle.dumps(array))
    with pytest.raises(CheckpointError, match=why):
        load_checkpoint(path, jax_small[1])


@pytest.mark.parametrize("dtype", [object, [("a", "f4"), ("b", "i4")], "M8[s]"])
def test_object_structured_and_other_dtypes_are_refused(dtype, tmp_path, jax_small):
    tree = _upstream_tree(jax_small)
    tree["params"]["PatchEmbed_0"]["Conv_0"]["bias"] = np.zeros(2, dtype=dtype)
    path = tmp_path / "o.pkl"
    path.write_bytes(pickle.dumps(tree))
    with pytest.raises(CheckpointError, match=r"refusing numpy dtype"):
        load_checkpoint(path, jax_small[1])


def test_string_arrays_load_but_are_not_weights(tmp_path, jax_small):
    tree = _upstream_tree(jax_small)
    tree["params"]["PatchEmbed_0"]["Conv_0"]["bias"] = np.array(["a", "b"])
    path = tmp_path / "s.pkl"
    path.write_bytes(pickle.dumps(tree))
    with pytest.raises(CheckpointError, match=r"params/PatchEmbed_0/Conv_0/bias has dtype <U1, expected a numeric"):
        load_checkpoint(path, jax_small[1])


# -- the other loaders: torch teacher caches, bundle tables ---------------------------------------

def test_teacher_cache_with_a_payload_is_refused(tmp_path):
    marker = tmp_path / "marker"
    n, seed, key = 4, 0, "k"
    cache = tmp_path / f"{key}-n{n}-s{seed}-e{TEACHER_STEPS}-{NOISE_TAG}.pt"
    torch.save({"z": Call(os.system, f"touch {marker}"), "y": torch.zeros(n), "x": torch.zeros(n)}, cache)
    with pytest.raises(ScheduleError) as info:
        make_pairs(tiny_model(), n, seed, key=key, cache_dir=tmp_path)
    assert "\n" not in str(info.value) and f"GLOBAL {os.system.__module__}.system" in str(info.value)
    assert not marker.exists()
    torch.load(cache, weights_only=False)                 # the payload is live without weights_only
    assert _wait_for(marker)


def test_teacher_cache_round_trips_under_weights_only(tmp_path, monkeypatch):
    from odelt.schedules import problem
    model = tiny_model()
    first = make_pairs(model, 2, 0, key="rt", cache_dir=tmp_path)
    monkeypatch.setattr(problem, "_CACHE", {})            # the second call must read the file
    assert len(list(tmp_path.glob("rt-*.pt"))) == 1
    again = make_pairs(model, 2, 0, key="rt", cache_dir=tmp_path)
    assert again is not first and all(torch.equal(getattr(first, f), getattr(again, f)) for f in "zyx")


def test_teacher_cache_of_the_wrong_shape_is_refused(tmp_path):
    n, seed, key = 4, 0, "k"
    torch.save({"z": torch.zeros(n)}, tmp_path / f"{key}-n{n}-s{seed}-e{TEACHER_STEPS}-{NOISE_TAG}.pt")
    with pytest.raises(ScheduleError, match=r"expected a teacher cache of tensors z, y, x, found \['z'\]"):
        make_pairs(tiny_model(), n, seed, key=key, cache_dir=tmp_path)


def test_table_with_object_arrays_is_refused(tmp_path):
    marker = tmp_path / "marker"
    np.savez(tmp_path / "t.npz", scale=np.array([Call(os.system, f"touch {marker}")], dtype=object))
    # Only what Tables reads of a manifest: its root, table entries and the conditioning graph's outputs.
    cond = types.SimpleNamespace(kind="conditioning", outputs=(types.SimpleNamespace(name="scale", shape=("batch", 1)),))
    manifest = types.SimpleNamespace(root=tmp_path, guidance=False, graphs={"cond": cond}, tables={"t": {
        "file": "t.npz", "outputs": ["scale"], "length": 4, "y": None, "t": [0.0], "dt_base": [2]}})
    with pytest.raises(BundleError, match=r"scale: expected float32 \(1, 1, 1\).*found object") as info:
        Tables(manifest)
    assert "\n" not in str(info.value) and not marker.exists()
    np.load(tmp_path / "t.npz", allow_pickle=True)["scale"]   # live when pickles are allowed
    assert _wait_for(marker)
