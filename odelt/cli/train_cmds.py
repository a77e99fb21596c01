"""Commands that train the embedded models: `train` (a DiT on the digits, or on their latents with
`--vae`), `train-vae` (the digits autoencoder) and `train-classifier`."""

from __future__ import annotations

import click

from odelt.cli import cli
from odelt.cli.options import COUNT, NONNEG, POSITIVE, Count, Finite


@cli.command()
@click.option("--preset", "preset_name", default="digits", show_default=True, help="Model preset (digits only has data).")
@click.option("--steps", type=COUNT, default=6000, show_default=True)
@click.option("--batch-size", type=Count(8), default=64, show_default=True)
@click.option("--lr", type=POSITIVE, default=1e-3, show_default=True)
@click.option("--warmup", type=NONNEG, default=200, show_default=True)
@click.option("--seed", type=NONNEG, default=0, show_default=True)
@click.option("--threads", type=Count(1, 1024), default=1, show_default=True,
              help="torch CPU threads (results are reproducible for a fixed thread count).")
@click.option("--snapshot-every", type=NONNEG, default=0, help="Also write the EMA weights every N steps.")
@click.option("--vae", "vae_dir", default=None, type=click.Path(file_okay=False),
              help="Train on the scaled latents of this digits autoencoder (a `train-vae` folder).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Output .safetensors file.")
def train(preset_name: str, steps: int, batch_size: int, lr: float, warmup: int, seed: int, threads: int,
          snapshot_every: int, vae_dir: str | None, out_path: str) -> None:
    """Train an ODE_t(ODE_l) DiT on scikit-learn's 8x8 digits (or their latents); saves the EMA weights."""
    import torch

    from odelt.data import load_digits_nchw
    from odelt.errors import ConfigError
    from odelt.models import preset, save_checkpoint
    from odelt.models.train import TrainConfig, train as run_training, train_config_json

    model_cfg = preset(preset_name)
    torch.set_num_threads(threads)
    cfg = TrainConfig(model=model_cfg, steps=steps, batch_size=batch_size, lr=lr, warmup=min(warmup, steps), seed=seed)
    meta = {"train_config": train_config_json(cfg), "threads": str(threads)}
    if vae_dir is not None:
        from odelt.fileio import file_hash
        from odelt.latent.train import WEIGHTS_FILE, latent_training_data, load_vae

        x, y = latent_training_data(load_vae(vae_dir), (model_cfg.in_channels, model_cfg.input_size))
        meta["vae_hash"] = file_hash(f"{vae_dir}/{WEIGHTS_FILE}")       # the autoencoder these latents are of
    elif (model_cfg.in_channels, model_cfg.input_size) != (1, 8):
        raise ConfigError(f"training data is 1x8x8 digits; preset {preset_name!r} expects "
                          f"{model_cfg.in_channels}x{model_cfg.input_size}x{model_cfg.input_size} (latents need --vae)")
    else:
        x, y = load_digits_nchw()

    def snapshot(ema, step: int) -> None:
        save_checkpoint(ema, out_path, extra={**meta, "step": str(step)})

    ema, losses = run_training(cfg, x, y, on_snapshot=snapshot, snapshot_every=snapshot_every)
    save_checkpoint(ema, out_path, extra={**meta, "step": str(steps)})
    tail = losses[-min(100, len(losses)):]
    click.echo(f"trained {steps} steps; mean loss over the last {len(tail)}: {sum(tail) / len(tail):.4f}; "
               f"wrote {out_path}")


@cli.command("train-vae")
@click.option("--steps", type=COUNT, default=1000, show_default=True)
@click.option("--batch-size", type=Count(2), default=64, show_default=True)
@click.option("--lr", type=POSITIVE, default=1e-3, show_default=True)
@click.option("--warmup", type=NONNEG, default=100, show_default=True)
@click.option("--kl-weight", type=Finite(0.0), default=1e-6, show_default=True,
              help="KL weight (SD-style: KL / pixels).")
@click.option("--seed", type=NONNEG, default=0, show_default=True)
@click.option("--threads", type=Count(1, 1024), default=1, show_default=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output diffusers folder.")
def train_vae(steps: int, batch_size: int, lr: float, warmup: int, kl_weight: float, seed: int, threads: int,
              out_dir: str) -> None:
    """Train the digits autoencoder (diffusers AutoencoderKL, 32x32 -> 4x4x4) behind builtin:digits-latent."""
    import torch

    from odelt.data import load_digits_nchw, split_digits
    from odelt.latent import train as lt

    lt.check_vae_out(out_dir)                  # before the work: never train into someone else's folder
    torch.set_num_threads(threads)
    cfg = lt.VAEConfig(steps=steps, batch_size=batch_size, lr=lr, warmup=min(warmup, steps), kl_weight=kl_weight,
                       seed=seed)
    (x_train, _), (x_held, y_held) = split_digits()
    vae, mses = lt.train_vae(cfg, x_train)
    factor = lt.set_scaling_factor(vae, lt.posterior_mean(vae, load_digits_nchw()[0]))
    lt.save_vae(vae, out_dir)
    r = lt.reconstruction_report(vae, x_held, y_held)
    click.echo(f"trained {steps} steps (train split); scaling_factor {factor:.5f}; held-out MSE "
               f"{r['mse_image']:.5f} (8x8: {r['mse_8x8']:.5f}); classifier accuracy {r['accuracy_original']:.4f} "
               f"on originals, {r['accuracy_reconstructed']:.4f} on reconstructions; wrote {out_dir}")


@cli.command("train-classifier")
@click.option("--epochs", type=COUNT, default=30, show_default=True)
@click.option("--seed", type=NONNEG, default=0, show_default=True)
@click.option("--threads", type=Count(1, 1024), default=1, show_default=True)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Output .safetensors file.")
def train_classifier(epochs: int, seed: int, threads: int, out_path: str) -> None:
    """Train the digits classifier behind FD-digits and the recognisability rate."""
    import torch

    from odelt.models.classifier import ClassifierConfig, save_classifier, train_classifier as fit

    torch.set_num_threads(threads)
    clf, held_acc = fit(ClassifierConfig(epochs=epochs, seed=seed))
    save_classifier(clf, out_path, extra={"held_out_accuracy": f"{held_acc:.4f}"})
    click.echo(f"held-out accuracy {held_acc:.4f}; wrote {out_path}")


