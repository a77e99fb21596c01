"""Every length 1..depth of any config exports and matches PyTorch, in both layouts.

A property-style test over random small configs (seeded `random`): depth, group size, depth_min,
heads, patch, channels, classes, guidance and ignore_dt vary; each config is exported at every length
and verified against DiT.forward at that length. Among the drawn configs are lengths below the first
group end (no live block: the velocity comes from the conditioning alone) and lengths that end
mid-group (trailing blocks dead); `test_the_draw_covers_the_hard_lengths` checks that they are there.
"""

import random

import pytest

from odelt.bundle.bundle import open_bundle
from odelt.exporter.export import ExportOptions, export_source
from odelt.bundle.iospec import ZERO_HEAD, layout_spec
from odelt.exporter.verify import VerifyOptions, verify_bundle
from odelt.models import DiTConfig, save_checkpoint
from odelt.models.config import PRESETS
from tests.models_zoo import random_model

pytestmark = pytest.mark.integration        # export + verify over random configurations

CONFIGS = 24
ATOL = 1e-5


def draw_config(rng: random.Random) -> tuple[DiTConfig, bool]:
    """A small valid config and whether guidance is folded in."""
    depth = rng.randint(1, 6)
    group = rng.randint(1, depth + 1)            # depth + 1: no group ends at all
    patch = rng.choice((1, 2))
    heads = rng.choice((1, 2, 4))
    cfg = DiTConfig(input_size=rng.choice((4, 8) if patch == 1 else (4, 6, 8)), patch_size=patch,
                    in_channels=rng.randint(1, 3), out_channels=rng.randint(1, 3),
                    hidden_size=rng.choice((8, 16)), num_heads=heads, mlp_ratio=rng.choice((1.0, 2.0)),
                    depth=depth, depth_group=group, depth_min=rng.randint(1, depth),
                    num_classes=rng.randint(1, 4), frequency_embedding_size=rng.choice((8, 16)),
                    ignore_dt=rng.random() < 0.2)
    return cfg, rng.random() < 0.35


_rng = random.Random(14)
DRAWN = [draw_config(_rng) for _ in range(CONFIGS)]


def _hard_lengths(cfg: DiTConfig) -> tuple[list[int], list[int]]:
    """(lengths below the first group end, lengths ending mid-group after at least one group end)."""
    every = range(1, cfg.depth + 1)
    return ([n for n in every if cfg.live_depth(n) == 0],
            [n for n in every if cfg.live_depth(n) > 0 and n % cfg.depth_group])


def test_the_draw_covers_the_hard_lengths():
    below = sum(len(_hard_lengths(cfg)[0]) for cfg, _ in DRAWN)
    mid = sum(len(_hard_lengths(cfg)[1]) for cfg, _ in DRAWN)
    odd_min = [cfg for cfg, _ in DRAWN if cfg.depth_min % cfg.depth_group]
    assert below >= 10 and mid >= 5 and len(odd_min) >= 5, (below, mid, len(odd_min))
    assert sum(g for _, g in DRAWN) >= 5 and sum(cfg.ignore_dt for cfg, _ in DRAWN) >= 2
    assert any(not cfg.group_ends for cfg, _ in DRAWN)       # a model with no live block at any length
    assert {cfg.depth for cfg, _ in DRAWN} == set(range(1, 7))


@pytest.mark.parametrize("index", range(CONFIGS))
def test_every_length_exports_and_verifies(index, tmp_path):
    cfg, guided = DRAWN[index]
    ckpt, out = tmp_path / "m.safetensors", tmp_path / "bundle"
    save_checkpoint(random_model(cfg, seed=index, std=0.3), ckpt)
    lengths = tuple(range(1, cfg.depth + 1))
    export_source(str(ckpt), out, ExportOptions(layouts=("segments", "per-length"), lengths=lengths,
                                                guidance=guided))
    m = open_bundle(out)
    for n in lengths:
        live = cfg.live_depth(n)
        assert m.graph(f"length_{n}").blocks == tuple(range(live))
        chain = m.chain(n, "segments")
        assert [b for g in chain for b in g.blocks] == list(range(live))      # dead blocks pruned
        assert chain[-1].name == ("head" if live else ZERO_HEAD)
    report = verify_bundle(out, VerifyOptions(cases=1))
    assert {layout: sorted(map(int, errs)) for layout, errs in report["per_length"].items()} == {
        "segments": list(lengths), "per-length": list(lengths)}
    assert report["max_abs_err"] <= ATOL, (cfg, guided, report["per_length"])


def test_zero_head_only_where_a_length_needs_it():
    cfg = DiTConfig(input_size=4, in_channels=1, out_channels=1, hidden_size=8, num_heads=2, depth=6,
                    depth_group=4, depth_min=2, num_classes=3)
    assert cfg.export_lengths == (2, 4, 6)
    assert PRESETS["DiT-XL/2"].export_lengths == (8, 12, 16, 20, 24, 28)     # trained 12/20/28, groups of 8
    assert PRESETS["digits"].export_lengths == PRESETS["digits"].lengths == (2, 4, 6, 8)
    with_low = layout_spec(cfg, "segments", (2, 6), guided=True)
    assert [g.name for g in with_low.graphs] == ["cond", "blocks_0-3", "head", ZERO_HEAD]
    assert [t.name for t in with_low.graphs[-1].inputs] == ["final_mod", "cfg_scale"]
    assert with_low.chains[2] == ("cond", ZERO_HEAD) and with_low.chains[6] == ("cond", "blocks_0-3", "head")
    assert ZERO_HEAD not in [g.name for g in layout_spec(cfg, "segments", (4, 5), guided=False).graphs]
    only_low = layout_spec(cfg, "segments", (1, 3), guided=False)
    assert [g.name for g in only_low.graphs] == ["cond", ZERO_HEAD]
    assert [t.name for t in only_low.graphs[0].outputs] == ["final_mod"]    # no block modulations to compute
