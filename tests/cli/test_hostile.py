"""Hostile files, one class each (issue 21): weights, configs, side files, engine records, and the
messages that must name the real culprit. Every input is made here, from the tiny models."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from odelt.errors import BundleError, CheckpointError, ConfigError, EngineMismatch, ScheduleError
from odelt.models import save_checkpoint
from tests.bundles import edit_by_hand, private_copy
from tests.exporter.conftest import random_model


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    return private_copy(tiny_bundle, tmp_path / "b")


def _upstream_tree(jax_small) -> dict:
    from odelt.models.checkpoint import read_pickle   # the flat arrays a real pickle holds

    tree: dict = {}
    for key, array in read_pickle(jax_small[0]).items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = np.array(array)
    return tree


# -- weights --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_safetensors_weights_are_refused_naming_the_tensor(tmp_path, run_cli, bad):
    model = random_model()
    with torch.no_grad():
        model.blocks[1].fc1.weight[3, 2] = bad
    save_checkpoint(model, tmp_path / "bad.safetensors")
    line = run_cli(["export", tmp_path / "bad.safetensors", "--out", tmp_path / "b"]).error_line()
    assert "'blocks.1.fc1.weight' has NaN or Inf values" in line
    assert not (tmp_path / "b").exists()


def test_non_finite_and_misranked_upstream_weights_are_refused(jax_small, tmp_path):
    from odelt.models.checkpoint import load_checkpoint

    tree = _upstream_tree(jax_small)
    tree["DiTBlock_0"]["Dense_0"]["bias"][0] = np.nan
    (tmp_path / "nan.pkl").write_bytes(pickle.dumps({"params": tree}, protocol=4))
    with pytest.raises(CheckpointError, match="'blocks.0.adaLN.bias' has NaN or Inf values"):
        load_checkpoint(tmp_path / "nan.pkl", jax_small[1])
    tree = _upstream_tree(jax_small)
    tree["PatchEmbed_0"]["Conv_0"]["kernel"] = tree["PatchEmbed_0"]["Conv_0"]["kernel"][0]
    (tmp_path / "rank.pkl").write_bytes(pickle.dumps({"params": tree}, protocol=4))
    with pytest.raises(CheckpointError, match=r"Conv_0/kernel has 3 dimensions .* expected 4 \(a conv kernel\)"):
        load_checkpoint(tmp_path / "rank.pkl", jax_small[1])
    (tmp_path / "good.pkl").write_bytes(pickle.dumps({"params": _upstream_tree(jax_small)}, protocol=4))
    load_checkpoint(tmp_path / "good.pkl", jax_small[1])          # control: the same file, unharmed


# -- configs --------------------------------------------------------------------------------------

def test_config_files_binary_absurd_or_not_json(jax_small, tmp_path, run_cli):
    pkl, config = jax_small[0], jax_small[1]
    (tmp_path / "garbage.json").write_bytes(bytes(range(128, 256)) * 4)
    assert "expected a JSON object (UTF-8 text), found binary content" in \
        run_cli(["info", pkl, "--config", tmp_path / "garbage.json"]).error_line()
    (tmp_path / "huge.json").write_text(json.dumps({**config, "hidden_size": 3 * 2 ** 30}))
    assert "hidden_size: expected an integer in 1..65536, found 3221225472" in \
        run_cli(["info", pkl, "--config", tmp_path / "huge.json"]).error_line()
    (tmp_path / "wide.json").write_text(json.dumps({**config, "hidden_size": 32768, "depth": 1000,
                                                    "depth_group": 1, "depth_min": 1}))
    assert "parameters; expected at most 2e+10" in run_cli(["info", pkl, "--config", tmp_path / "wide.json"]).error_line()


def test_safetensors_config_metadata_that_is_not_json(tmp_path, run_cli):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "m.safetensors"),
              metadata={"format": "odelt-dit/1", "config": "{not json"})
    line = run_cli(["info", tmp_path / "m.safetensors"]).error_line()
    assert "metadata 'config': expected a JSON object of model config fields, found invalid JSON" in line


def test_vae_config_with_wrong_types_is_one_line(tmp_path):
    from odelt.latent.vae import load_vae
    from tests.latent.vae_files import random_vae, save_folder

    save_folder(random_vae("sd"), tmp_path / "vae")
    load_vae("sd", tmp_path / "vae")                               # control
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    for key, value, expected in (("latent_channels", "4", "an integer"), ("scaling_factor", "big", "a finite number"),
                                 ("block_out_channels", "64", "a list like"), ("sample_size", 10 ** 12, "an integer of at most 65536")):
        (tmp_path / "vae" / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(CheckpointError, match=f"{key}: expected {expected}") as e:
            load_vae("sd", tmp_path / "vae")
        assert "\n" not in str(e.value)


# -- side files -----------------------------------------------------------------------------------

def _table(bundle: Path) -> None:
    from odelt.exporter.tables import add_table

    add_table(bundle, "t2", [0.0, 0.5], [1, 1], 2, y=3)


def test_a_table_member_claiming_petabytes_is_refused_before_reading(bundle):
    from odelt.bundle.bundle import open_bundle
    from odelt.bundle.chain import load_table

    _table(bundle)
    assert set(load_table(open_bundle(bundle), "t2")) >= {"mod0", "final_mod"}       # control
    path = bundle / "tables" / "t2.npz"
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    data = members["mod0.npy"]
    header = data[10:10 + struct.unpack("<H", data[8:10])[0]].decode("latin1")
    huge = header.replace("(2, 1, ", "(1000000000000000, 4, ")
    members["mod0.npy"] = data[:8] + struct.pack("<H", len(huge)) + huge.encode("latin1") + data[10 + len(header):]
    with zipfile.ZipFile(path, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    edit_by_hand(bundle, lambda d: None)                            # re-record: only the content is hostile
    with pytest.raises(BundleError, match=r"mod0: expected float32 \(2, 1, \d+\) \(the manifest's entry\), "
                                          r"found float32 \(1000000000000000, 4, \d+\)"):
        load_table(open_bundle(bundle), "t2")


def test_quality_table_that_is_not_an_object_or_has_bad_rows(bundle):
    from odelt.bundle.bundle import open_bundle
    from odelt.runtime.budget.plans import QUALITY, load_candidates

    m = open_bundle(bundle)
    for content, expected in (([1, 2], "expected an object of format"),
                              ({"format": "odelt-quality/1", "rows": {}}, "rows: expected a non-empty list"),
                              ({"format": "odelt-quality/1", "rows": [{"name": "a", "schedule": "s", "solver": "euler",
                                "call_lengths": [2], "precision": "fp32", "error": float("nan")}]},
                               "rows.0.error: expected a finite number >= 0, found nan"),
                              ({"format": "odelt-quality/1", "rows": [{"name": "a", "schedule": "s", "solver": "euler",
                                "call_lengths": ["2"], "precision": "fp32", "error": 0.1}]}, "rows.0.call_lengths")):
        (bundle / QUALITY).write_text(json.dumps(content))
        with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
            load_candidates(m)


@pytest.mark.parametrize("key,value,expected", [
    ("cfg_scale", float("nan"), "cfg_scale: expected a finite number or null, found nan"),
    ("cfg_scale", "7", "cfg_scale: expected a finite number or null, found '7'"),
    ("t_grid", [0.0, float("nan"), 1.0], "t_grid must be finite"),
    ("lengths", [True, 2], "lengths and dt_base must be integers"),
])
def test_schedule_files_with_non_finite_or_wrong_values(tmp_path, key, value, expected):
    from odelt.ode.heuristics import heuristic_schedule
    from odelt.ode.schedule import load_schedule, save_schedule

    save_schedule(heuristic_schedule("uniform", "euler", 2, 4), tmp_path / "s.json")
    load_schedule(tmp_path / "s.json")                              # control
    data = json.loads((tmp_path / "s.json").read_text())
    data[key] = value
    (tmp_path / "s.json").write_text(json.dumps(data))
    with pytest.raises(ScheduleError, match=expected.replace("(", r"\(")):
        load_schedule(tmp_path / "s.json")


def test_engine_records_are_checked_by_their_one_reader(tmp_path):
    from odelt.engines.ort import read_record, record_path
    from odelt.engines.platform import Platform, check_compatible, manifest_path, read_manifest

    engine = tmp_path / "cond.onnx"
    for where, reader in ((record_path, read_record), (manifest_path, read_manifest)):
        record = where(engine)
        for content, expected in ((b"[1]", "expected a JSON object"), (b'{"a": NaN}', "non-finite number NaN"),
                                  (b"\xff\xfe\x00garbage", "unreadable")):
            record.write_bytes(content)
            with pytest.raises(EngineMismatch, match=expected) as e:
                reader(engine)
            assert "\n" not in str(e.value)
    record = manifest_path(engine)
    plat = {"trt_version": 10.13, "gpu_name": "G", "compute_capability": "9.0"}
    record.write_text(json.dumps({"backend": "tensorrt", "platform": plat, "graph_sha256": "x", "cache_key": "y"}))
    with pytest.raises(EngineMismatch, match="platform: expected strings"):
        read_manifest(engine)
    built = Platform("10.13", "G", "9.0")
    # the same text on both sides (a record from an older writer kept a number): the values are shown
    with pytest.raises(EngineMismatch, match=r"recorded 10.13/'G'/'9.0', found '10.13'/'G'/'9.0'"):
        check_compatible(type("M", (), {"platform": Platform(10.13, "G", "9.0")})(), built, engine)


# -- misleading messages --------------------------------------------------------------------------

def test_non_finite_sampling_names_the_file_that_changed(bundle, run_cli, tmp_path):
    """Weights that rot with their size and time kept: the message names the file, not the model."""
    import os

    import onnx
    from onnx import numpy_helper

    path = bundle / "per-length" / "length_4.onnx"
    st = path.stat()
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(init).copy()
    arr.flat[:] = np.inf
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    data = model.SerializeToString()
    assert len(data) == st.st_size                                 # same size: the cheap check passes
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))            # same time: only a re-hash can tell
    line = run_cli(["generate", bundle, "-n", "1", "--batch", "1", "--layout", "per-length", "--no-tables",
                    "--schedule", "uniform:euler:2", "--out", tmp_path / "g.png"]).error_line()
    assert "bundle file per-length/length_4.onnx was modified" in line and "diverged" not in line
    assert not (tmp_path / "g.png").exists()


def test_a_failed_demo_leaves_no_record_of_the_refused_model(tmp_path, tiny_ckpt):
    from odelt.pipeline.demo import SOURCE, DemoOptions, check_source, run_demo

    model = random_model()
    with torch.no_grad():
        model.final.linear.bias[0] = float("nan")
    save_checkpoint(model, tmp_path / "nan.safetensors")
    out = tmp_path / "demo"
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        run_demo(DemoOptions(out=out, source=str(tmp_path / "nan.safetensors")), log=lambda m: None)
    assert not (out / SOURCE).exists() and not (out / "bundle").exists()
    check_source(DemoOptions(out=out, source=str(tiny_ckpt)), log=lambda m: None)   # the next demo is not refused
