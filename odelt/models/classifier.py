"""A small digits CNN and the two quality metrics it defines.

* `fd_digits(samples)`: Frechet distance between Gaussian fits of the classifier's penultimate
  features (64-d) of `samples` and of all 1797 real digits (the reference statistics are computed
  once per process from the dataset and the shipped weights, then cached).
* `recognisability(samples, labels=None)`: the fraction of samples whose top class probability is
  > 0.9; when `labels` are given, the top class must also equal the label (the conditional case).

`score_images(images, labels)` gives both for (N, 1, 8k, 8k) images (decoded latents included).

Samples are (N, 1, 8, 8) in model space [-1, 1]; they are clipped to [-1, 1] first, as an image would
be when displayed. The classifier is trained on the fixed train split of odelt.data (every 5th image
held out); its held-out accuracy is stored in the weights' metadata.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from odelt.errors import CheckpointError
from odelt.fileio import atomic_path

BUILTIN = Path(__file__).parent / "weights" / "digits_classifier.safetensors"
_FORMAT = "odelt-digits-classifier/1"
CONFIDENT = 0.9


class DigitsCNN(nn.Module):
    """(B, 1, 8, 8) -> logits (B, 10); `features` gives the 64-d penultimate activations."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, 64)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(64, 10)

    def features(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(x))))                  # (B, 64, 8, 8)
        h = F.relu(self.conv3(F.max_pool2d(h, 2)))                     # (B, 64, 4, 4)
        return F.relu(self.fc(h.flatten(1)))                           # (B, 64)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.drop(self.features(x)))


@dataclass(frozen=True)
class ClassifierConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    shift: int = 1          # random translation by up to this many pixels (train-time augmentation)
    outlier_weight: float = 0.3   # weight of the outlier-exposure term (uniform target on non-digits)
    seed: int = 0


def _augment(x: Tensor, shift: int, gen: torch.Generator) -> Tensor:
    if shift == 0:
        return x
    pad = F.pad(x, (shift,) * 4, value=-1.0)                          # background is -1
    dx, dy = (int(v) for v in torch.randint(0, 2 * shift + 1, (2,), generator=gen))
    return pad[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]


def _outliers(x: Tensor, gen: torch.Generator) -> Tensor:
    """Non-digits the classifier must not be sure about: Gaussian / uniform noise and digits buried in
    noise (flow-path points with t < 0.35).

    Without them a CNN is confidently wrong on pure noise (54% of N(0,1) images got > 0.9), which would
    make the recognisability rate meaningless for a generator's failures.
    """
    n = x.shape[0]
    kind = torch.randint(0, 3, (n, 1, 1, 1), generator=gen)
    gauss = torch.randn(x.shape, generator=gen).clamp(-1, 1)
    unif = torch.rand(x.shape, generator=gen) * 2 - 1
    t = torch.rand(n, 1, 1, 1, generator=gen) * 0.35
    noised = ((1 - t) * torch.randn(x.shape, generator=gen) + t * x).clamp(-1, 1)
    return torch.where(kind == 0, gauss, torch.where(kind == 1, unif, noised))


def train_classifier(cfg: ClassifierConfig, progress: bool = True) -> tuple[DigitsCNN, float]:
    """Train on the fixed train split; returns (model in eval mode, held-out accuracy)."""
    from tqdm import tqdm

    from odelt.data import split_digits

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    (xtr, ytr), (xho, yho) = split_digits()
    xtr, ytr = torch.tensor(np.array(xtr)), torch.tensor(np.array(ytr))
    model = DigitsCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    for _ in tqdm(range(cfg.epochs), desc="classifier", disable=None if progress else True):
        model.train()
        order = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            loss = F.cross_entropy(model(_augment(xtr[idx], cfg.shift, gen)), ytr[idx])
            if cfg.outlier_weight > 0:                                 # cross-entropy to the uniform
                logp = F.log_softmax(model(_outliers(xtr[idx], gen)), dim=1)
                loss = loss - cfg.outlier_weight * logp.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    return model, accuracy(model, xho, yho)


@torch.no_grad()
def accuracy(model: DigitsCNN, x: np.ndarray | Tensor, y: np.ndarray | Tensor) -> float:
    pred = model(torch.as_tensor(np.asarray(x), dtype=torch.float32)).argmax(1).numpy()
    return float(np.mean(pred == np.asarray(y)))


def save_classifier(model: DigitsCNN, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Atomic safetensors write (temp file, then rename)."""

    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp), metadata={"format": _FORMAT, **{k: str(v) for k, v in (extra or {}).items()}})


def load_classifier(path: str | os.PathLike | None = None) -> DigitsCNN:
    """The shipped classifier (default) or one written by save_classifier, in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path) if path is not None else BUILTIN
    try:
        with safe_open(str(path), framework="pt") as f:
            fmt = (f.metadata() or {}).get("format")
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable classifier file ({e})") from None
    if fmt != _FORMAT:
        raise CheckpointError(f"{path}: expected format {_FORMAT}, found {fmt!r}")
    model = DigitsCNN()
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit DigitsCNN ({str(e).splitlines()[0]})") from None
    return model.eval()


@lru_cache(maxsize=1)
def _shipped() -> DigitsCNN:
    return load_classifier()


def _prep(samples: np.ndarray | Tensor) -> Tensor:
    if isinstance(samples, Tensor):
        x = samples.detach().cpu().float()
    else:
        x = torch.tensor(np.array(samples), dtype=torch.float32)
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
        raise CheckpointError(f"digits samples must be (N, 1, 8, 8), found {tuple(x.shape)}")
    return x.clamp(-1.0, 1.0)


@torch.no_grad()
def features(samples: np.ndarray | Tensor, model: DigitsCNN | None = None) -> np.ndarray:
    """Penultimate features (N, 64) as float64."""
    return (model or _shipped()).features(_prep(samples)).double().numpy()


@lru_cache(maxsize=1)
def reference_stats() -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the shipped classifier's features over all 1797 real digits."""
    from odelt.data import load_digits_nchw

    f = features(load_digits_nchw()[0])
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(s1 + s2 - 2 (s1 s2)^(1/2))."""
    from scipy import linalg

    with warnings.catch_warnings():                  # dead ReLU features make s1 s2 singular; fine
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():               # near-singular product: regularise, as FID code does
        eps = 1e-6 * np.eye(len(s1))
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(covmean)))


def fd_digits(samples: np.ndarray | Tensor) -> float:
    """FD-digits: Frechet distance of classifier features, samples vs the whole digits set."""
    f = features(samples)
    if len(f) < 2:
        raise CheckpointError(f"fd_digits needs at least 2 samples, found {len(f)}")
    mu, sigma = reference_stats()
    return frechet_distance(f.mean(0), np.cov(f, rowvar=False), mu, sigma)


@torch.no_grad()
def recognisability(samples: np.ndarray | Tensor, labels: np.ndarray | Tensor | None = None) -> float:
    """Fraction with top probability > 0.9 (and top class == label when labels are given)."""
    probs = torch.softmax(_shipped()(_prep(samples)), dim=1)          # (N, 10)
    conf, pred = probs.max(1)
    ok = conf > CONFIDENT
    if labels is not None:
        ok &= (labels.cpu() if isinstance(labels, Tensor) else torch.tensor(np.array(labels))).long() == pred
    return float(ok.float().mean())


def score_images(images: np.ndarray | Tensor, labels: np.ndarray | Tensor) -> dict[str, float]:
    """The quality of a batch of digits-like images: {"fd_digits", "rate", "rate_any"}.

    images: (N, 1, 8k, 8k), e.g. 8x8 samples of a pixel model or 32x32 images decoded from latents
    (mapped back to 8x8 by odelt.data.pool_to_digits); labels (N,): the classes they were asked for.
    rate = top class == label and confidence > 0.9; rate_any = confidence > 0.9 whatever the class.
    """
    from odelt.data import pool_to_digits

    x = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    x8 = pool_to_digits(x)
    return {"fd_digits": fd_digits(x8), "rate": recognisability(x8, labels), "rate_any": recognisability(x8)}
