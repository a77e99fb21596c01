"""The model's structure: dead blocks, presets, per-sample lengths."""

import pytest
import torch

from odelt.errors import ConfigError
from odelt.models import PRESETS, DiT, DiTConfig

from tests.models_zoo import config, random_model

TINY = config("tiny-depth6")


def tiny_model(cfg=TINY):
    return random_model(cfg, seed=0, std=0.05)


def inputs(cfg, b=3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    return x, torch.rand(b, generator=g), torch.randint(0, 8, (b,), generator=g), torch.randint(0, 11, (b,), generator=g)


@pytest.mark.parametrize("length,live", [(1, 0), (2, 2), (3, 2), (5, 4), (6, 6)])
def test_dead_blocks_change_nothing_and_never_run(length, live):
    model = tiny_model()
    args = inputs(TINY)
    calls = []
    hooks = [blk.register_forward_hook(lambda m, i, o, k=k: calls.append(k)) for k, blk in enumerate(model.blocks)]
    with torch.no_grad():
        ref = model(*args, length)
        for blk in model.blocks[live:]:
            for p in blk.parameters():
                p.add_(torch.randn_like(p))
        out = model(*args, length)
    for h in hooks:
        h.remove()
    assert calls == list(range(live)) * 2
    assert torch.equal(ref, out)
    if live > 0:  # and the live ones do matter
        with torch.no_grad():
            model.blocks[live - 1].fc2.bias.add_(1.0)
            assert not torch.allclose(model(*args, length), ref)


def test_per_sample_lengths_equal_per_length_rows():
    model = tiny_model()
    x, t, d, y = inputs(TINY, b=4)
    lengths = torch.tensor([2, 6, 4, 3])
    with torch.no_grad():
        mixed = model(x, t, d, y, lengths)
        for i, length in enumerate(lengths.tolist()):
            row = model(x[i:i + 1], t[i:i + 1], d[i:i + 1], y[i:i + 1], length)
            torch.testing.assert_close(mixed[i:i + 1], row, atol=1e-6, rtol=0)


def test_length_outside_range_is_a_config_error():
    model = tiny_model()
    with pytest.raises(ConfigError, match=r"length must be in \[1, 6\], found 7"):
        model(*inputs(TINY), 7)
    with pytest.raises(ConfigError, match="found 0"):
        model(*inputs(TINY), torch.tensor([0, 2, 2]))


def count(cfg, length):
    with torch.device("meta"):
        model = DiT(cfg)
    return model.param_bytes(length) // 4


@pytest.mark.parametrize("name,length,expected", [
    # upstream's Flax parameter counts (odelt.md §1), minus its unused 256-entry logvars table
    ("DiT-B/2", 12, 130.33e6), ("DiT-B/2", 8, 87.82e6), ("DiT-B/2", 4, 45.31e6),
])
def test_preset_parameter_counts_match_upstream(name, length, expected):
    assert count(PRESETS[name], length) == pytest.approx(expected, rel=2e-4)


def test_xl_trailing_blocks_are_dead():
    cfg = PRESETS["DiT-XL/2"]
    assert [cfg.live_depth(n) for n in cfg.lengths] == [8, 16, 24]
    # 676.47M upstream at l=28 counts 4 blocks that never reach the output
    full = count(cfg, None)
    assert full == pytest.approx(676.47e6, rel=2e-4)


def test_invalid_config_is_one_line_error():
    with pytest.raises(ConfigError, match="hidden_size divisible by num_heads"):
        DiTConfig(hidden_size=30, num_heads=4)
