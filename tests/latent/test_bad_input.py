"""Bad `--vae` input to `export`: each case exits 1 with one stderr line naming what was expected
and found, and leaves no bundle (nor a hidden partial folder) behind."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from tests.latent.test_vae import _Payload
from tests.latent.vae_files import KL_CONFIG, random_vae, save_file, save_folder, save_msgpack
from tests.models_zoo import config, random_model


@pytest.fixture(scope="module")
def files(tmp_path_factory, kl, taesd):
    """A latent DiT, a pixel-space DiT, and one broken VAE per case."""
    from odelt.models import save_checkpoint

    root = tmp_path_factory.mktemp("bad")
    save_checkpoint(random_model(config("tiny-latent")), root / "latent.safetensors")
    save_checkpoint(random_model(config("tiny")), root / "pixel.safetensors")
    state = dict(kl[0].state_dict())
    cfg = dict(kl[0].config)

    def with_state(name, change):
        s = dict(state)
        change(s)
        return save_file(s, root / name / "diffusion_pytorch_model.safetensors", cfg).parent

    paths = {
        "kl": kl[1], "taesd": taesd[1],
        "wide": save_folder(random_vae("sd", latent_channels=8), root / "wide"),
        "missing": with_state("missing", lambda s: s.pop("decoder.conv_out.weight")),
        "unexpected": with_state("unexpected", lambda s: s.update({"decoder.conv_out.extra": torch.zeros(1)})),
    }
    good = (kl[1] / "diffusion_pytorch_model.safetensors").read_bytes()
    for name, data in (("truncated", good[: len(good) // 3]), ("random", bytes(range(256)) * 8),
                       ("pickled", pickle.dumps(_Payload(root / "pwned"), protocol=4))):
        (root / name).mkdir()
        (root / name / "diffusion_pytorch_model.safetensors").write_bytes(data)
        (root / name / "config.json").write_text(json.dumps(KL_CONFIG))
    paths.update({n: root / n for n in ("truncated", "random", "pickled")})
    for name, extra in (("scaled-taesd", {"scaling_factor": 0.5}),):
        folder = save_folder(random_vae("taesd"), root / name)
        data = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**data, **extra}))
        paths[name] = folder
    shifted = save_folder(random_vae("sd", shift_factor=0.1159), root / "shifted")
    paths["shifted"] = shifted
    paths["grey-taesd"] = save_folder(random_vae("taesd", in_channels=1, out_channels=1), root / "grey")
    paths["flax-taesd"] = save_msgpack(random_vae("taesd"), root / "ft" / "t.msgpack")
    return {"root": root, "latent": root / "latent.safetensors", "pixel": root / "pixel.safetensors", **paths}


CASES = [
    ("channels", "latent", ["sd:{wide}"], "latent_channels is 8, but the DiT's in/out_channels are 4/4"),
    ("pixel-space", "pixel", ["sd:{kl}"], "a pixel-space model has no decoder stage"),
    ("taesd-scale", "latent", ["taesd:{scaled-taesd}"], "expected scaling_factor 1.0, found 0.5"),
    ("shift", "latent", ["sd:{shifted}"], "shift_factor is 0.1159; expected none"),
    ("truncated", "latent", ["sd:{truncated}"], "not a readable safetensors file"),
    ("random-bytes", "latent", ["sd:{random}"], "expected a safetensors file or a Flax msgpack checkpoint"),
    ("pickle", "latent", ["sd:{pickled}"], "refusing to unpickle it"),
    ("missing-key", "latent", ["sd:{missing}"], "missing weight 'decoder.conv_out.weight'"),
    ("unexpected-key", "latent", ["sd:{unexpected}"], "unexpected weight 'decoder.conv_out.extra'"),
    ("kind", "latent", ["vq:{kl}"], "unknown VAE kind 'vq'; expected one of ['sd', 'taesd']"),
    ("no-colon", "latent", ["{kl}"], "expected KIND:PATH"),
    ("twice", "latent", ["sd:{kl}", "sd:{kl}"], "kind 'sd' given 2 times"),
    ("no-path", "latent", ["sd:{root}/nothing"], "not found; expected a diffusers folder or a weights file"),
    ("wrong-kind-file", "latent", ["taesd:{flax-taesd}"], "is a msgpack file; expected safetensors"),
    ("wrong-kind-config", "latent", ["taesd:{kl}"], "is a AutoencoderKL config; --vae taesd expects AutoencoderTiny"),
    ("image-shapes", "latent", ["sd:{kl}", "taesd:{grey-taesd}"],
     "taesd decodes to (1, 16, 16) images, sd to (3, 16, 16); expected every decoder of a bundle to make "
     "the same image shape"),
    ("second-bad", "latent", ["taesd:{taesd}", "sd:{missing}"], "missing weight"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_vae_is_one_line_and_leaves_no_bundle(case, files, tmp_path, run_cli):
    _, dit, vaes, expected = case
    argv = ["export", files[dit], "--out", tmp_path / "b"]
    for v in vaes:
        argv += ["--vae", v.format(**{k: str(p) for k, p in files.items()})]
    line = run_cli(argv).error_line()
    assert expected in line, line
    assert list(tmp_path.iterdir()) == []                   # no bundle, no hidden partial folder
    assert not (files["root"] / "pwned").exists()


def test_control_the_good_vaes_export(files, tmp_path, run_cli):
    res = run_cli(["export", files["latent"], "--out", tmp_path / "b", "--vae", f"sd:{files['kl']}",
                   "--vae", f"taesd:{files['taesd']}"])
    assert res.code == 0, res.err
    assert "decoder sd" in res.out and "decoder taesd" in res.out
