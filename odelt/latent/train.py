"""The latent half of `builtin:digits-latent`: a small SD-style autoencoder (diffusers' AutoencoderKL)
trained on the digits upsampled to 32x32, and the scaled latents an ODE_t(ODE_l) DiT is trained on.

The autoencoder is Stable Diffusion's design at a small width: four encoder / decoder levels (three
downsamplings, so 8x: a 32x32 image has a 4x4 latent), 4 latent channels, a diagonal-Gaussian
posterior. It is trained with per-pixel MSE plus a small KL term, weighted as SD's recipe weighs its
KL against a reconstruction loss summed over pixels (`kl_weight` multiplies KL / pixels here), on
latents sampled from the posterior so that the decoder learns to tolerate small latent errors.

As SD does, the latents are scaled to unit variance for the diffusion model: `scaling_factor` =
1 / std of the latents, stored in the autoencoder's config. The DiT is trained on the posterior
*means* times the scaling factor (`encode_scaled`): the trainer takes a fixed data array, and with a
small KL weight the posterior's spread is small next to the latents' own. Images come back through
`decode_scaled`, which divides by the scaling factor once, as SD's pipelines do before `decode`.

Files: the autoencoder is saved in diffusers' own format (a folder with config.json and
diffusion_pytorch_model.safetensors), written by diffusers into a temporary folder that is then swapped
into place; it is read back by odelt.latent.vae from safetensors only (no pickled weights are ever loaded).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from odelt import validate
from odelt.data import SIDE, upsample_digits
from odelt.errors import CheckpointError, ConfigError
from odelt.fileio import building, check_out, mark_output, swap_in_dir

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class VAEConfig:
    """The autoencoder (diffusers AutoencoderKL fields) and its training run."""

    block_out_channels: tuple[int, ...] = (16, 32, 32, 32)   # 4 levels: 3 downsamplings = 8x, as SD
    norm_num_groups: int = 8
    layers_per_block: int = 1
    latent_channels: int = 4
    image_size: int = 32
    kl_weight: float = 1e-6
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    decay_frac: float = 1.0       # cosine decay over the whole run after warmup (lr_at's tail)
    seed: int = 0

    def __post_init__(self) -> None:
        validate.count("--steps", self.steps)
        validate.count("--batch-size", self.batch_size, 2)
        validate.positive("--lr", self.lr)
        validate.count("--warmup", self.warmup, 0)
        validate.count("--seed", self.seed, 0)
        validate.number("--kl-weight", self.kl_weight, 0.0)
        if self.image_size % SIDE or self.image_size % self.downsampling:
            raise ConfigError(f"image size {self.image_size}: expected a multiple of {SIDE} and of the "
                              f"autoencoder's downsampling {self.downsampling}")
        bad = [w for w in self.block_out_channels if w % self.norm_num_groups]
        if bad:
            raise ConfigError(f"block widths {list(self.block_out_channels)}: expected multiples of "
                              f"norm_num_groups={self.norm_num_groups}, found {bad}")

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsampling


def make_vae(cfg: VAEConfig):
    """A fresh AutoencoderKL with 1 input / output channel (grey digits)."""
    from diffusers import AutoencoderKL

    levels = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block, latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups, sample_size=cfg.image_size)


def vae_loss(vae, x: Tensor, kl_weight: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """(loss, mse) for images x (B, 1, H, W): MSE of the decoded posterior sample + kl_weight * KL / pixels."""
    post = vae.encode(x).latent_dist
    rec = vae.decode(post.sample(generator=gen)).sample
    mse = torch.mean((rec - x) ** 2)
    kl = post.kl().mean() / (x.shape[-1] * x.shape[-2])      # kl() sums over the latent; mean over the batch
    return mse + kl_weight * kl, mse


def train_vae(cfg: VAEConfig, x: np.ndarray, progress: bool = True) -> tuple[object, list[float]]:
    """Train on 8x8 digits x (N, 1, 8, 8) in [-1, 1] (upsampled here); returns (vae in eval mode, per-step MSE)."""
    from tqdm import tqdm

    from odelt.models.train import lr_at

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    vae = make_vae(cfg).train()
    data = torch.tensor(upsample_digits(x, cfg.image_size // SIDE), dtype=torch.float32)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    mses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="vae", disable=None if progress else True, mininterval=5.0)
    for k in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(k, cfg)          # type: ignore[arg-type]  # same schedule fields as TrainConfig
        idx = torch.randint(len(data), (cfg.batch_size,), generator=gen)
        loss, mse = vae_loss(vae, data[idx], cfg.kl_weight, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        mses.append(float(mse.detach()))
        if (k + 1) % 50 == 0:
            bar.set_postfix(mse=f"{np.mean(mses[-50:]):.4f}")
    return vae.eval().requires_grad_(False), mses


def _image_tensor(vae, x: np.ndarray | Tensor) -> Tensor:
    """8x8 digits are upsampled to the autoencoder's image size; images of that size pass as they are."""
    x = x.float() if isinstance(x, Tensor) else torch.tensor(np.array(x, dtype=np.float32))
    size = int(vae.config.sample_size)
    if x.ndim == 4 and x.shape[-1] == SIDE and size != SIDE:
        x = torch.as_tensor(upsample_digits(x.numpy(), size // SIDE))
    if x.ndim != 4 or tuple(x.shape[1:]) != (int(vae.config.in_channels), size, size):
        raise ConfigError(f"autoencoder input must be (N, {vae.config.in_channels}, {size}, {size}) "
                          f"or 8x8 digits, found {tuple(x.shape)}")
    return x


@torch.no_grad()
def posterior_mean(vae, x: np.ndarray | Tensor, batch: int = 256) -> Tensor:
    """Unscaled posterior means (N, latent_channels, h, w) of digits or images."""
    x = _image_tensor(vae, x)
    return torch.cat([vae.encode(x[i:i + batch]).latent_dist.mean for i in range(0, len(x), batch)])


def set_scaling_factor(vae, latents: Tensor) -> float:
    """SD's recipe: scaling_factor = 1 / std of the (unscaled) latents; recorded in the vae's config."""
    factor = float(1.0 / latents.float().std())
    vae.register_to_config(scaling_factor=factor, shift_factor=None)
    return factor


def encode_scaled(vae, x: np.ndarray | Tensor) -> Tensor:
    """What the DiT is trained on and generates: posterior mean * scaling_factor."""
    return posterior_mean(vae, x) * float(vae.config.scaling_factor)


@torch.no_grad()
def decode_scaled(vae, z: Tensor, batch: int = 256) -> Tensor:
    """DiT latents -> images (N, 1, H, W): the scaling factor is divided out here, once."""
    z = z.float() / float(vae.config.scaling_factor)
    return torch.cat([vae.decode(z[i:i + batch]).sample for i in range(0, len(z), batch)])


VAE_KIND = "autoencoder"                     # the output marker of a saved autoencoder folder
_VAE_FILES = {"config.json", "diffusion_pytorch_model.safetensors"}


def check_vae_out(path: str | os.PathLike) -> Path:
    """Before training: `path` is new, empty, or an autoencoder folder this tool wrote (replaced);
    a folder holding anything else is refused."""
    return check_out(path, VAE_KIND, force=True,
                     legacy=lambda p: {q.name for q in p.iterdir()} <= _VAE_FILES)


def save_vae(vae, path: str | os.PathLike) -> Path:
    """Write the autoencoder as a diffusers folder (config.json + safetensors), replacing `path` whole."""
    final = check_vae_out(path)
    with building(final.parent, final.name) as tmp:
        vae.save_pretrained(str(tmp), safe_serialization=True)
        for f in tmp.iterdir():
            f.chmod(0o644)                       # diffusers leaves the weights 0600; artifacts are shared data
        mark_output(tmp, VAE_KIND)
        return swap_in_dir(tmp, final)


def load_vae(path: str | os.PathLike):
    """An AutoencoderKL from a diffusers folder (as save_vae writes it), in eval mode, encoder
    included; read by the decoder stage's loader (odelt.latent.vae: safetensors only, key by key)."""
    from odelt.latent.vae import load_vae as load_kl

    folder = Path(path)
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:           # the folder itself: the DiT records the hash of its weights file
        raise CheckpointError(f"{folder}: expected a diffusers autoencoder folder with {CONFIG_FILE} and "
                              f"{WEIGHTS_FILE}, missing {missing}")
    return load_kl("sd", folder, encoder=True).model.eval().requires_grad_(False)


def reconstruction_report(vae, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """How well 8x8 digits x (N, 1, 8, 8) survive encode -> decode: MSE at the image size and at 8x8, and
    the shipped digits classifier's accuracy / labelled confidence rate on the originals vs the reconstructions."""
    from odelt.data import pool_to_digits
    from odelt.models.classifier import accuracy, load_classifier, recognisability

    up = upsample_digits(x, int(vae.config.sample_size) // SIDE)
    rec = decode_scaled(vae, encode_scaled(vae, up)).numpy()
    rec8 = pool_to_digits(rec)
    clf = load_classifier()
    return {"mse_image": float(np.mean((np.clip(rec, -1, 1) - up) ** 2)), "mse_8x8": float(np.mean((rec8 - x) ** 2)),
            "accuracy_original": accuracy(clf, x, y), "accuracy_reconstructed": accuracy(clf, rec8, y),
            "rate_original": recognisability(x, y), "rate_reconstructed": recognisability(rec8, y)}


def latent_training_data(vae, model_input: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(scaled latents of all 1797 digits, labels): the DiT's training data; `model_input` is the DiT's
    (in_channels, input_size), which must be the autoencoder's latent shape."""
    from odelt.data import load_digits_nchw

    x, y = load_digits_nchw()
    z = encode_scaled(vae, x)
    if (z.shape[1], z.shape[2]) != tuple(model_input):
        raise ConfigError(f"the autoencoder's latents are {z.shape[1]}x{z.shape[2]}x{z.shape[3]}; the model "
                          f"expects {model_input[0]}x{model_input[1]}x{model_input[1]}")
    return z.numpy(), np.asarray(y)
