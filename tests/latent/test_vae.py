"""Loading VAEs: diffusers folders and files in both attention spellings, Flax msgpack trees, and
the one-line refusals of everything else (hostile files refused unread)."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from odelt.errors import CheckpointError, ConfigError
from odelt.latent.flax_msgpack import read_msgpack
from odelt.latent.vae import check_fits, load_vae, parse_vae_options
from odelt.latent.weights import current_names
from tests.latent.vae_files import KL_CONFIG, legacy_state, ndarray_ext, pack, save_file, save_msgpack
from tests.models_zoo import config


def _same_weights(model, vae):
    want, got = model.state_dict(), vae.model.state_dict()
    assert set(want) == set(got)
    for k in want:
        assert torch.equal(want[k], got[k]), k


def _decode(model, z):
    with torch.no_grad():
        return model.decode(z).sample


@pytest.mark.parametrize("which", ["kl", "taesd"])
def test_diffusers_folder_loads_current_spelling(which, request):
    model, folder = request.getfixturevalue(which)
    vae = load_vae("sd" if which == "kl" else "taesd", folder)
    _same_weights(model, vae)
    assert vae.spelling == ("current" if which == "kl" else "none")
    assert vae.weights.name == "diffusion_pytorch_model.safetensors" and len(vae.source_hash) == 16


def test_legacy_spelling_file_loads_the_same_model(kl, tmp_path):
    model, _ = kl
    state = legacy_state(model)
    assert "decoder.mid_block.attentions.0.query.weight" in state and not any(".to_q." in k for k in state)
    path = save_file(state, tmp_path / "legacy" / "vae.safetensors", dict(model.config))
    vae = load_vae("sd", path)
    assert vae.spelling == "legacy"
    _same_weights(model, vae)
    z = torch.randn(1, 4, 4, 4)
    assert torch.equal(_decode(model, z), _decode(vae.model, z))


def test_mixed_spellings_are_refused(kl, tmp_path):
    state = dict(kl[0].state_dict())
    state["decoder.mid_block.attentions.0.query.weight"] = state.pop("decoder.mid_block.attentions.0.to_q.weight")
    with pytest.raises(CheckpointError, match="mixes attention spellings"):
        current_names(state, tmp_path)


@pytest.mark.parametrize("wrap", [False, True], ids=["tree", "params-tree"])
def test_flax_msgpack_loads_and_decodes_like_pytorch(kl, tmp_path, wrap):
    model, _ = kl
    path = save_msgpack(model, tmp_path / "flax" / "diffusion_flax_model.msgpack", dict(model.config), wrap)
    flat = read_msgpack(path)
    assert flat["decoder/up_blocks_0/resnets_0/conv1/kernel"].shape == (3, 3, 16, 16)      # HWIO
    assert "decoder/mid_block/attentions_0/proj_attn/kernel" in flat
    vae = load_vae("sd", path.parent)                       # the folder: config.json + the msgpack
    assert vae.weights == path and vae.spelling == "legacy"
    _same_weights(model, vae)
    z = torch.randn(2, 4, 4, 4)
    np.testing.assert_allclose(_decode(vae.model, z), _decode(model, z), atol=1e-6)


def test_flax_bfloat16_arrays_widen_exactly(tmp_path):
    """bfloat16 is the top 16 bits of a float32: values with a short mantissa survive exactly."""
    import msgpack

    want = np.array([1.0, -2.5, 0.15625, 2.0**100], dtype=np.float32)
    bf16 = (want.view(np.uint32) >> 16).astype(np.uint16)
    path = tmp_path / "bf16.msgpack"
    path.write_bytes(msgpack.packb({"a": {"kernel": ndarray_ext(bf16, "bfloat16")}}, use_bin_type=True))
    np.testing.assert_array_equal(read_msgpack(path)["a/kernel"], want)


def test_lone_file_without_config_uses_the_standard_config(kl, tmp_path):
    path = save_file(kl[0].state_dict(), tmp_path / "alone" / "vae.safetensors")
    with pytest.raises(CheckpointError, match=r"weight .* for AutoencoderKL \(the standard sd config\)"):
        load_vae("sd", path)


def _state(kl):
    return dict(kl[0].state_dict())


@pytest.mark.parametrize("change,msg", [
    (lambda s: s.pop("decoder.up_blocks.1.resnets.0.conv2.weight"),
     "missing weight 'decoder.up_blocks.1.resnets.0.conv2.weight' (expected shape (8, 8, 3, 3))"),
    (lambda s: s.update({"decoder.extra.weight": torch.zeros(2)}), "unexpected weight 'decoder.extra.weight'"),
    (lambda s: s.update({"decoder.conv_in.weight": torch.zeros(16, 4, 1, 1)}),
     "weight 'decoder.conv_in.weight' has shape (16, 4, 1, 1), expected (16, 4, 3, 3)"),
    (lambda s: s.update({"decoder.conv_in.bias": torch.full((16,), float("nan"))}), "non-finite values"),
    (lambda s: s.update({"decoder.conv_in.bias": torch.zeros(16, dtype=torch.int32)}), "expected floating point"),
], ids=["missing", "unexpected", "shape", "nan", "int"])
def test_bad_weights_are_one_line_errors_naming_the_key(kl, tmp_path, change, msg):
    state = _state(kl)
    change(state)
    path = save_file(state, tmp_path / "bad" / "vae.safetensors", dict(kl[0].config))
    with pytest.raises(CheckpointError) as info:
        load_vae("sd", path)
    assert msg in str(info.value) and "\n" not in str(info.value)


def test_decoder_only_file_loads(kl, tmp_path):
    """The encoder is not needed for decoding: a file with only the decode path loads."""
    state = {k: v for k, v in _state(kl).items() if k.startswith(("decoder.", "post_quant_conv."))}
    vae = load_vae("sd", save_file(state, tmp_path / "dec" / "vae.safetensors", dict(kl[0].config)))
    z = torch.randn(1, 4, 4, 4)
    assert torch.equal(_decode(vae.model, z), _decode(kl[0], z))


class _Payload:
    """A pickle that would create `marker` if anything unpickled it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("name", ["vae.safetensors", "diffusion_flax_model.msgpack", "vae.bin"])
def test_pickle_payload_is_refused_unread(tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / "f" / name
    path.parent.mkdir()
    path.write_bytes(pickle.dumps(_Payload(marker), protocol=4))
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_vae("sd", path)
    assert not marker.exists()


def test_torch_zip_and_folder_with_only_bin_are_refused(kl, tmp_path):
    torch.save(kl[0].state_dict(), tmp_path / "vae.pt")
    with pytest.raises(CheckpointError, match="zip archive"):
        load_vae("sd", tmp_path / "vae.pt")
    folder = tmp_path / "binonly"
    folder.mkdir()
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"no diffusion_pytorch_model.safetensors or .* \(pickled"):
        load_vae("sd", folder)


@pytest.mark.parametrize("code", [2, 3, 42, -1])
def test_msgpack_extension_types_other_than_ndarray_are_refused(tmp_path, code):
    import msgpack

    ext = msgpack.ExtType(code, b"\x00" * 8) if code != -1 else msgpack.Timestamp(0)
    path = tmp_path / "x.msgpack"
    path.write_bytes(msgpack.packb({"a": {"kernel": ext}}, use_bin_type=True))
    with pytest.raises(CheckpointError, match="not a Flax msgpack checkpoint"):
        read_msgpack(path)


@pytest.mark.parametrize("triple,msg", [
    (([2], "object", b"\x00" * 16), "dtype 'object' is not a weight dtype"),
    (([2], "float32", b"\x00" * 7), "needs 8 bytes, found 7"),
    (([-1], "float32", b""), "shape must be"),
    (([2**62, 2**62, 4], "float32", b""), "needs 340282366920938463463374607431768211456 bytes, found 0"),
    (([2], "float32", "text"), "needs 8 bytes, found str"),
    ("nope", "must be \\(shape, dtype, bytes\\)"),
], ids=["object", "short", "negative", "huge", "str", "not-triple"])
def test_msgpack_ndarray_payloads_are_checked(tmp_path, triple, msg):
    import msgpack

    inner = msgpack.packb(triple, use_bin_type=True)
    path = tmp_path / "x.msgpack"
    path.write_bytes(msgpack.packb({"a": msgpack.ExtType(1, inner)}, use_bin_type=True))
    with pytest.raises(CheckpointError, match=msg):
        read_msgpack(path)


def test_msgpack_structure_and_truncation(kl, tmp_path):
    import msgpack

    for body, msg in (({"a": [1, 2]}, "holds a list"), ({"a": {1: ndarray_ext(np.zeros(1, np.float32))}}, "int"),
                      ({}, "found none")):
        path = tmp_path / "s.msgpack"
        path.write_bytes(msgpack.packb(body, use_bin_type=True, strict_types=False))
        with pytest.raises(CheckpointError, match=msg):
            read_msgpack(path)
    data = pack({"a": {"kernel": np.zeros((3, 3), np.float32)}})
    path = tmp_path / "t.msgpack"
    path.write_bytes(data[:-5])
    with pytest.raises(CheckpointError, match="truncated or not msgpack"):
        read_msgpack(path)


def test_truncated_and_random_safetensors_are_refused(kl, tmp_path):
    good = kl[1] / "diffusion_pytorch_model.safetensors"
    cut = tmp_path / "cut" / "diffusion_pytorch_model.safetensors"
    cut.parent.mkdir()
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (cut.parent / "config.json").write_text((kl[1] / "config.json").read_text())
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_vae("sd", cut.parent)
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(np.random.default_rng(0).bytes(4096).replace(b"{", b"x"))
    with pytest.raises(CheckpointError, match="expected a safetensors file or a Flax msgpack checkpoint"):
        load_vae("sd", noise)


def test_taesd_does_not_read_msgpack(taesd, tmp_path):
    path = save_msgpack(taesd[0], tmp_path / "t.msgpack")
    with pytest.raises(CheckpointError, match="is a msgpack file; expected safetensors"):
        load_vae("taesd", path)


@pytest.mark.parametrize("edit,msg", [
    ({"_class_name": "UNet2DModel"}, "is a UNet2DModel config; --vae sd expects AutoencoderKL"),
    ({"wobble": 1}, "unknown AutoencoderKL config key 'wobble'"),
    ({"norm_num_groups": 3}, "cannot build AutoencoderKL from this config"),
])
def test_bad_configs(kl, tmp_path, edit, msg):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(
        (kl[1] / "diffusion_pytorch_model.safetensors").read_bytes())
    (folder / "config.json").write_text(json.dumps({**KL_CONFIG, **edit}))
    with pytest.raises(CheckpointError, match=msg):
        load_vae("sd", folder)


def test_options_parse_and_refuse():
    assert parse_vae_options(("sd:/a", "taesd:b:c")) == (("sd", "/a"), ("taesd", "b:c"))
    for text, msg in (("vq:/a", "unknown VAE kind 'vq'"), ("sd", "expected KIND:PATH"), ("sd:", "KIND:PATH")):
        with pytest.raises(ConfigError, match=msg):
            parse_vae_options((text,))
    with pytest.raises(ConfigError, match="kind 'sd' given 2 times"):
        parse_vae_options(("sd:/a", "sd:/b"))


def test_fit_checks(kl, taesd, tmp_path):
    import dataclasses

    latent = dataclasses.replace(config("tiny"), in_channels=4, out_channels=4)
    sd, tiny = load_vae("sd", kl[1]), load_vae("taesd", taesd[1])
    check_fits(sd, latent)
    check_fits(tiny, latent)
    with pytest.raises(ConfigError, match="latent_channels is 4, but the DiT's in/out_channels are 1/1.*pixel-space"):
        check_fits(sd, config("tiny"))
    tiny.model.register_to_config(scaling_factor=0.5)
    with pytest.raises(ConfigError, match="expected scaling_factor 1.0, found 0.5"):
        check_fits(tiny, latent)
    for key, value, msg in (("scaling_factor", -1.0, "finite number > 0, found -1.0"),
                            ("scaling_factor", float("nan"), "found nan"),
                            ("shift_factor", 0.1159, "shift_factor is 0.1159")):
        vae = load_vae("sd", kl[1])
        vae.model.register_to_config(**{key: value})
        with pytest.raises(ConfigError, match=msg):
            check_fits(vae, latent)
