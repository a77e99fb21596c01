"""The shipped digits classifier and the metrics it defines; the shipped builtin:digits model."""

import numpy as np
import pytest
import torch

from odelt.data import load_digits_nchw, split_digits, upsample_digits
from odelt.errors import CheckpointError, ConfigError
from odelt.models import load_checkpoint
from odelt.models.classifier import (accuracy, fd_digits, frechet_distance, load_classifier,
                                     recognisability, reference_stats, score_images)
from odelt.models.sampling import sample_euler, sample_labels_noise


def test_shipped_classifier_held_out_accuracy():
    _, (xh, yh) = split_digits()
    assert accuracy(load_classifier(), xh, yh) > 0.9


def test_fd_real_small_noise_large():
    x, _ = load_digits_nchw()
    rng = np.random.default_rng(0)
    real = fd_digits(x[rng.choice(len(x), 512, replace=False)])
    noise = fd_digits(rng.standard_normal((512, 1, 8, 8)).astype(np.float32))
    assert real < 20 and noise > 100 and noise > 10 * real
    mu, sigma = reference_stats()
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-4)


def test_recognisability_real_vs_noise_and_labels():
    x, y = load_digits_nchw()
    assert recognisability(x) > 0.9 and recognisability(x, y) > 0.9
    assert recognisability(x, (y + 1) % 10) < 0.05                 # confident but wrong does not count
    noise = np.random.default_rng(1).standard_normal((256, 1, 8, 8)).astype(np.float32)
    assert recognisability(noise) < 0.1


def test_metrics_reject_wrong_shapes():
    with pytest.raises(CheckpointError, match=r"\(N, 1, 8, 8\)"):
        fd_digits(np.zeros((4, 8, 8), dtype=np.float32))


def test_score_images_scores_8x8_and_upsampled_images_alike():
    x, y = load_digits_nchw()
    x, y = x[:200], y[:200]
    wrong = (y + 1) % 10
    s8 = score_images(x, wrong)
    assert s8 == {"fd_digits": fd_digits(x), "rate": recognisability(x, wrong), "rate_any": recognisability(x)}
    assert s8["rate"] < 0.05 < 0.9 < s8["rate_any"]                 # labels are checked when given
    s32 = score_images(upsample_digits(x, 4), wrong)
    assert s32["fd_digits"] == pytest.approx(s8["fd_digits"], rel=1e-6)
    assert (s32["rate"], s32["rate_any"]) == (s8["rate"], s8["rate_any"])
    assert score_images(torch.tensor(x), torch.tensor(y))["rate"] == recognisability(x, y) > 0.9
    with pytest.raises(ConfigError, match=r"found \(2, 1, 12, 12\)"):
        score_images(np.zeros((2, 1, 12, 12)), np.zeros(2))


def test_builtin_digits_loads_and_makes_digits():
    model = load_checkpoint("builtin:digits")
    assert len(model.config.lengths) >= 3
    torch.manual_seed(0)
    noise, y = sample_labels_noise(100, 10, (1, 8, 8), seed=3)
    samples = sample_euler(model, noise, y, model.config.depth, 16)
    assert recognisability(samples, y) > 0.5                        # sanity; the bar itself is bench/quality.py
