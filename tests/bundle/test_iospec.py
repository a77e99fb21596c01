"""IO described as data: the layout plans, lengths, batch ranges."""

import pytest

from odelt.errors import ConfigError
from odelt.bundle.iospec import BatchRange, check_lengths, layout_spec
from odelt.models import PRESETS

from tests.exporter.conftest import TINY


def test_segments_plan_digits():
    cfg = PRESETS["digits"]
    plan = layout_spec(cfg, "segments", cfg.lengths, guided=False)
    names = [g.name for g in plan.graphs]
    assert names == ["cond", "blocks_0-1", "blocks_2-3", "blocks_4-5", "blocks_6-7", "head"]
    assert plan.chains[4] == ("cond", "blocks_0-1", "blocks_2-3", "head")
    chunk = plan.graphs[2]
    assert [t.name for t in chunk.inputs] == ["h", "V", "mod2", "mod3"]
    assert [t.name for t in chunk.outputs] == ["h_out", "V_out"]
    assert [t.name for t in plan.graphs[1].inputs] == ["x", "mod0", "mod1"]
    # each block's token path is in exactly one chunk
    blocks = [b for g in plan.graphs for b in g.blocks]
    assert blocks == list(range(8))


def test_xl_trained_lengths_exit_at_group_ends_and_drop_dead_blocks():
    cfg = PRESETS["DiT-XL/2"]                         # lengths 12/20/28, groups of 8
    plan = layout_spec(cfg, "segments", cfg.lengths, guided=True)
    assert plan.chains[12] == ("cond", "blocks_0-7", "head")
    assert plan.chains[28][-2] == "blocks_16-23"      # blocks 24..27 are dead at every length
    assert max(b for g in plan.graphs for b in g.blocks) == 23
    cond = plan.graphs[0]
    assert [t.name for t in cond.outputs][-2:] == ["mod23", "final_mod"]
    assert cond.outputs[0].shape == ("2*batch", 6 * 1152)
    per = layout_spec(cfg, "per-length", cfg.lengths, guided=True)
    assert [g.blocks[-1] for g in per.graphs] == [7, 15, 23]


def test_shapes_resolve_and_profiles():
    plan = layout_spec(TINY, "segments", (2, 4), guided=True)
    head = plan.graphs[-1]
    assert head.inputs[0].resolve(3) == (6, 16, 32)      # 2B rows inside a cfg graph
    assert head.outputs[0].resolve(3) == (3, 1, 8, 8)
    prof = head.shape_ranges(BatchRange(1, 2, 4))
    assert prof["cfg_scale"] == ((1,), (2,), (4,))
    assert prof["V"][2] == (8, 16, 32)


@pytest.mark.parametrize("lengths,msg", [((0,), "in \\[1, 5\\]"), ((6,), "in \\[1, 5\\]"), ((True,), "in \\[1, 5\\]"),
                                         ((), "at least one")])
def test_bad_lengths(lengths, msg):
    with pytest.raises(ConfigError, match=msg):
        check_lengths(TINY, lengths)


def test_length_between_exits_shares_the_lower_exit():
    plan = layout_spec(TINY, "segments", (3, 2), guided=False)
    assert sorted(plan.chains) == [2, 3]
    assert plan.chains[3] == plan.chains[2]           # same graphs; l differs only through cond's l input


@pytest.mark.parametrize("text", ["0:1:2", "3:2:1", "x", "1:2", "1:2:3:4", ""])
def test_bad_batch(text):
    with pytest.raises(ConfigError, match="batch"):
        BatchRange.parse(text)


def test_batch_parse():
    assert BatchRange.parse("1:4:8") == BatchRange(1, 4, 8)
    assert BatchRange.parse("2") == BatchRange(2, 2, 2)
