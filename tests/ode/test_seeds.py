"""One noise/label convention (odelt.ode.seeds): calibration, schedule learning, the quality table's
held-out pairs, the PyTorch reference and the runtime's generate draw the same x0 and labels for a
seed, and an unconditional model (num_classes = 1) samples the null class everywhere."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from odelt.calibration.trajectories import Noise
from odelt.models import DiT
from odelt.models.sampling import sample_labels_noise
from odelt.ode.seeds import make_labels, make_noise
from odelt.runtime.sampler import Stats, generate_batches
from odelt.schedules.problem import HELD_OUT_SEED_OFFSET, draw_noise, make_pairs

from tests.models_zoo import TINY


def test_labels_cycle_for_a_conditional_model_and_are_null_for_an_unconditional_one():
    assert make_labels(5, 3).tolist() == [0, 1, 2, 0, 1]
    assert make_labels(3, 1).tolist() == [1, 1, 1]            # the null class of a one-class model


def test_noise_is_the_seeds_standard_normal():
    expected = np.random.default_rng(7).standard_normal((2, 1, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(make_noise(7, 2, (1, 2, 2)), expected)
    assert not np.array_equal(make_noise(7, 2, (1, 2, 2)), make_noise(8, 2, (1, 2, 2)))


def _generated(config, n: int, seed: int):
    """The x0 and labels generate() feeds its sampler, batch by batch."""
    seen = []

    def run(x0, y):
        seen.append((x0.copy(), y.copy()))
        return np.zeros((len(y), config.out_channels, config.input_size, config.input_size), np.float32), Stats()

    generate_batches(run, SimpleNamespace(config=config), n, 3, seed)
    return np.concatenate([x for x, _ in seen]), np.concatenate([y for _, y in seen])


@pytest.mark.parametrize("classes", [1, 10])
def test_every_stage_draws_the_same_noise_and_labels(classes):
    config = dataclasses.replace(TINY, num_classes=classes)
    model = DiT(config).eval()
    n, seed, shape = 7, 5, (config.in_channels, config.input_size, config.input_size)
    x0, y = _generated(config, n, seed)                                   # the runtime
    calib = Noise.draw(SimpleNamespace(config=config), n, seed)           # calibration
    z, labels = draw_noise(model, n, seed)                                # schedule learning
    ref_z, ref_y = sample_labels_noise(n, classes, shape, seed)           # the PyTorch reference
    for noise, lab in ((calib.x0, calib.y), (z.numpy(), labels.numpy()), (ref_z.numpy(), ref_y.numpy())):
        np.testing.assert_array_equal(noise, x0)
        assert lab.tolist() == y.tolist()
    assert labels.dtype == torch.long                                     # what the embedding takes
    if classes == 1:
        assert set(y.tolist()) == {1}                                     # the null class


def test_the_quality_tables_held_out_pairs_are_generates_inputs_at_the_held_out_seed():
    config = dataclasses.replace(TINY, num_classes=1)
    model = DiT(config).eval()
    pairs = make_pairs(model, 4, 2, held_out=True)
    x0, y = _generated(config, 4, 2 + HELD_OUT_SEED_OFFSET)
    np.testing.assert_array_equal(pairs.z.numpy(), x0)
    assert pairs.y.tolist() == y.tolist() == [1, 1, 1, 1]
