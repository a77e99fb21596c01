"""Checkpoint loading: our format round trip, upstream pickles, and one-line errors."""

import pickle
import sys
import types
from collections import namedtuple

import numpy as np
import pytest
import torch

from odelt.cli import main
from odelt.errors import CheckpointError, ConfigError
from odelt.models import DiTConfig, load_checkpoint, save_checkpoint
from tests.models.test_dit import TINY, inputs, tiny_model


def test_safetensors_round_trip(tmp_path):
    model = tiny_model()
    save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.config == TINY
    with torch.no_grad():
        assert torch.equal(model(*inputs(TINY), 4), loaded(*inputs(TINY), 4))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp files left behind


def test_given_config_must_match_stored(tmp_path):
    save_checkpoint(tiny_model(), tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match="differs from the stored one"):
        load_checkpoint(tmp_path / "m.safetensors", DiTConfig(hidden_size=64, num_heads=2))


def test_truncated_files_are_one_line_errors(tmp_path, jax_small):
    save_checkpoint(tiny_model(), tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(tmp_path / "cut.safetensors")
    ckpt, config, _, _ = jax_small
    raw = ckpt.read_bytes()
    (tmp_path / "cut.pkl").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pkl", config)


def _upstream_tree(jax_small):
    with open(jax_small[0], "rb") as f:
        return pickle.load(f)


def test_missing_key_is_named(tmp_path, jax_small):
    ckpt = _upstream_tree(jax_small)
    del ckpt["params"]["DiTBlock_1"]["Dense_2"]
    path = tmp_path / "c.pkl"
    path.write_bytes(pickle.dumps(ckpt))
    with pytest.raises(CheckpointError, match="missing key params/DiTBlock_1/Dense_2/kernel"):
        load_checkpoint(path, jax_small[1])


def test_wrong_config_names_the_mismatching_weight(jax_small):
    wrong = dict(jax_small[1], hidden_size=32, num_heads=4)
    with pytest.raises(CheckpointError, match=r"PatchEmbed|x_embedder.*shape"):
        load_checkpoint(jax_small[0], wrong)
    with pytest.raises(CheckpointError, match="has 4 DiT blocks but the config says depth=2"):
        load_checkpoint(jax_small[0], dict(jax_small[1], depth=2, depth_min=2))


def test_optax_opt_state_does_not_stop_the_load(tmp_path, jax_small):
    # A stand-in optax module exists only while pickling, so loading must cope without optax.
    fake = types.ModuleType("optax")
    state_cls = namedtuple("ScaleByAdamState", "count mu nu")
    state_cls.__module__ = "optax"
    fake.ScaleByAdamState = state_cls
    sys.modules["optax"] = fake
    try:
        ckpt = _upstream_tree(jax_small)
        ckpt["opt_state"] = (state_cls(np.int32(3), ckpt["params"], ckpt["params"]),)
        data = pickle.dumps(ckpt)
    finally:
        del sys.modules["optax"]
    path = tmp_path / "with_opt.pkl"
    path.write_bytes(data)
    model = load_checkpoint(path, jax_small[1])
    ref = load_checkpoint(jax_small[0], jax_small[1])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


def test_shortcut_models_wrapper_and_no_params(tmp_path, jax_small):
    ckpt = _upstream_tree(jax_small)
    (tmp_path / "sm.pkl").write_bytes(pickle.dumps({"train_state": ckpt, "_timestamp": 0.0}))
    load_checkpoint(tmp_path / "sm.pkl", jax_small[1])
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps({"weights": 1}))
    with pytest.raises(CheckpointError, match=r"expected an upstream checkpoint with a 'params' tree, found \['weights'\]"):
        load_checkpoint(tmp_path / "bad.pkl", jax_small[1])


def test_cli_maps_errors_to_one_line(tmp_path, capsys, jax_small):
    with pytest.raises(SystemExit) as exit_info:
        main(["info", str(tmp_path / "missing.safetensors")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("odelt-export: error: checkpoint not found")
    with pytest.raises(SystemExit):
        main(["info", str(jax_small[0])])
    assert "needs its model config" in capsys.readouterr().err
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(SystemExit):
        main(["info", str(jax_small[0]), "--config", str(tmp_path / "c.json")])
    assert "invalid JSON" in capsys.readouterr().err


def test_cli_info_describes_upstream_checkpoint(capsys, jax_small):
    main(["info", str(jax_small[0]), "--config", str(jax_small[0].parent / "meta.json")])
    out = capsys.readouterr().out
    assert "depth 4" in out and "lengths [2, 4]" in out
