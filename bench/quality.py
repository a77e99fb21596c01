"""Quality of a digits model under the PyTorch reference samplers: FD-digits and recognisability for every
length x Euler step count, Dopri5 (dt_base 0 vs 7) against 128-step Euler, and a sample grid.

    .venv/bin/python bench/quality.py --out docs/quality.json --grid docs/digits_grid.png
    .venv/bin/python bench/quality.py --model builtin:digits-latent --steps 1,4,16,64 --tols "" \
        --out docs/quality_latent.json --grid docs/digits_latent_grid.png

A latent model (builtin:digits-latent, or any model with `--vae FOLDER`) is scored on its decoded images
(autoencoder decode of latents / scaling_factor, 4x4 blocks averaged back to 8x8); its grid is the decoded
32x32 samples of the full length at the largest step count, one row per class.

Samples: N noises from a fixed seed, labels cycling 0..9 (uniform), conditional sampling with the real
label. `rate` = recognisability with labels (top class == label and confidence > 0.9); `rate_any` =
confidence > 0.9 whatever the class.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch

from odelt.data import load_digits_nchw, to_unit
from odelt.models import load_checkpoint, sample_dopri5, sample_euler, sample_labels_noise, score_images


def _pixels(x: torch.Tensor) -> torch.Tensor:
    return x


def _score(x: torch.Tensor, y: torch.Tensor, decode=_pixels) -> dict:
    s = score_images(decode(x), y)
    return {"fd_digits": round(s["fd_digits"], 3), "rate": round(s["rate"], 4), "rate_any": round(s["rate_any"], 4)}


def euler_table(model, noise, y, lengths, steps_list, decode=_pixels) -> tuple[list[dict], dict]:
    rows, full = [], {}
    for length in lengths:
        for steps in steps_list:
            t0 = time.perf_counter()
            x = sample_euler(model, noise, y, length, steps)
            rows.append({"length": length, "steps": steps, **_score(x, y, decode),
                         "seconds": round(time.perf_counter() - t0, 2)})
            print(json.dumps(rows[-1]), file=sys.stderr)
            full[(length, steps)] = x
    return rows, full


def dopri5_table(model, noise, y, length, reference, tols, decode=_pixels) -> list[dict]:
    rows = []
    for dt_base in (0, 7):
        for tol in tols:
            x, nfe = sample_dopri5(model, noise, y, length, rtol=tol, atol=tol, dt_base=dt_base)
            diff = (x - reference).abs()
            rows.append({"length": length, "dt_base": dt_base, "tol": tol, "nfe": nfe,
                         "max_abs_vs_euler128": round(float(diff.max()), 4),
                         "mean_abs_vs_euler128": round(float(diff.mean()), 4), **_score(x, y, decode)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def save_grid(samples: dict, lengths, steps: int, path: str, per_class: int = 6) -> None:
    """Panels side by side, one per length; rows are classes 0..9; nearest-neighbour x4."""
    from PIL import Image

    cell, pad = 32, 2
    panels = []
    for length in lengths:
        x = to_unit(samples[(length, steps)].numpy()[:, 0])            # (N, 8, 8), labels cycle 0..9
        h, w = 10 * (cell + pad) + pad, per_class * (cell + pad) + pad
        canvas = np.ones((h, w), dtype=np.float32)
        for cls in range(10):
            for j in range(per_class):
                img = np.kron(x[cls + 10 * j], np.ones((cell // 8, cell // 8)))
                r, c = pad + cls * (cell + pad), pad + j * (cell + pad)
                canvas[r:r + cell, c:c + cell] = img
        panels.append(canvas)
    gap = np.ones((panels[0].shape[0], 3 * pad), dtype=np.float32) * 0.5
    grid = np.concatenate([p for pair in zip(panels, [gap] * len(panels)) for p in pair][:-1], axis=1)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".png")
    os.close(fd)
    Image.fromarray((grid * 255).astype(np.uint8)).save(tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def save_decoded_grid(images: torch.Tensor, path: str, per_class: int = 8) -> None:
    """Decoded samples (labels cycling 0..9): one row per class, `per_class` columns, x2 nearest."""
    from odelt.runtime import grid_image, save_png

    order = [c + 10 * j for c in range(10) for j in range(per_class)]
    save_png(grid_image(images.numpy()[order], cols=per_class, upscale=2, pad=2), path)


def _autoencoder(source: str, vae: str | None):
    """The autoencoder folder of a latent model: --vae, or the builtin model's own."""
    from odelt.latent import load_trained_vae as load_vae
    from odelt.models import BUILTIN_PREFIX, BUILTIN_VAES, builtin_vae_path

    name = source[len(BUILTIN_PREFIX):] if source.startswith(BUILTIN_PREFIX) else None
    if vae is None and name in BUILTIN_VAES:
        vae = str(builtin_vae_path(name))
    return (vae, load_vae(vae)) if vae else (None, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:digits")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", default="1,4,16,128")
    ap.add_argument("--tols", default="1e-2,1e-3")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--grid", default=None, help="PNG of samples (128 Euler steps, every length)")
    ap.add_argument("--vae", default=None, help="autoencoder folder of a latent model (builtin ones: their own)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from odelt.latent import decode_scaled, encode_scaled

    model = load_checkpoint(args.model)
    cfg = model.config
    vae_dir, vae = _autoencoder(args.model, args.vae)
    decode = _pixels if vae is None else (lambda z: decode_scaled(vae, z))
    noise, y = sample_labels_noise(args.n, cfg.num_classes, (cfg.in_channels, cfg.input_size, cfg.input_size),
                                   args.seed)
    steps_list = [int(s) for s in args.steps.split(",")]
    rows, samples = euler_table(model, noise, y, cfg.lengths, steps_list, decode)
    tols = [float(t) for t in args.tols.split(",") if t.strip()]
    dopri = []
    if tols:
        reference = samples.get((cfg.depth, 128))
        if reference is None:
            reference = sample_euler(model, noise, y, cfg.depth, 128)
        dopri = dopri5_table(model, noise, y, cfg.depth, reference, tols, decode)
    real_x, real_y = load_digits_nchw()
    pick = np.random.default_rng(args.seed).choice(len(real_x), args.n, replace=False)
    real = torch.tensor(real_x[pick]), torch.tensor(real_y[pick])
    report = {
        "model": args.model, "n": args.n, "seed": args.seed, "labels": "cycling 0..9, conditional",
        "real_digits": _score(*real),
        **({"vae": os.path.relpath(vae_dir), "scaling_factor": float(vae.config.scaling_factor),
            "reconstructed_digits": _score(encode_scaled(vae, real[0]), real[1], decode)} if vae else {}),
        "euler": rows, "dopri5": dopri,
        "host": {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads},
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    if args.grid and vae is not None:
        save_decoded_grid(decode(samples[(cfg.depth, max(steps_list))]), args.grid)
    elif args.grid and 128 in steps_list:
        save_grid(samples, cfg.lengths, 128, args.grid)
    print(f"wrote {args.out}" + (f" and {args.grid}" if args.grid else ""))


if __name__ == "__main__":
    main()
