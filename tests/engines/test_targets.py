import pytest

from odelt.engines.targets import GiB, TARGETS, get_target, parse_version
from odelt.errors import ConfigError


def test_all_presets_present_and_frozen():
    assert set(TARGETS) == {"desktop", "orin-nano", "orin-nx", "agx-orin", "thor"}
    with pytest.raises(AttributeError):
        TARGETS["desktop"].dla_cores = 2  # type: ignore[misc]


def test_unknown_target_is_one_line_config_error():
    with pytest.raises(ConfigError, match="unknown target 'orin-mega'.*desktop, orin-nano"):
        get_target("orin-mega")


def test_workspace_capped_only_on_small_unified_memory():
    for t in TARGETS.values():
        if t.unified_memory_gb is not None and t.unified_memory_gb <= 16:
            assert t.workspace_bytes is not None and t.workspace_bytes < t.unified_memory_gb * GiB // 2
    assert get_target("desktop").workspace_bytes is None
    assert get_target("orin-nano").workspace_bytes < get_target("orin-nx").workspace_bytes


def test_dla_only_where_hardware_and_tensorrt_have_it():
    assert not get_target("orin-nano").dla_available((10, 3))
    assert not get_target("thor").dla_available((11, 4))
    assert not get_target("desktop").dla_available((10, 3))
    agx = get_target("agx-orin")
    assert agx.dla_available((10, 3)) and agx.dla_available((8, 6))
    assert not agx.dla_available((10, 16))       # JetPack 7.2's 10.16: no DLA on Orin
    assert agx.dla_available((11, 4, 1))         # back with 11.4.1 on AGX Orin only
    assert not get_target("orin-nx").dla_available((11, 4))


def test_tensorrt_ranges_and_legacy_opset():
    nano, desktop, thor = get_target("orin-nano"), get_target("desktop"), get_target("thor")
    assert nano.supports_trt((8, 5, 2)) and nano.supports_trt((10, 16, 0))
    assert not nano.supports_trt((11, 4, 1))      # TRT 11 only on AGX Orin and Thor
    assert desktop.supports_trt((8, 6, 1)) and desktop.supports_trt((11, 1, 0))
    assert not desktop.supports_trt((8, 5, 2))
    assert not thor.supports_trt((10, 3)) and thor.supports_trt((10, 13, 3, 9))
    assert nano.max_opset((8, 5, 2)) == 16       # JetPack 5: no LayerNormalization op
    assert nano.max_opset((8, 6, 2)) is None
    for t in TARGETS.values():                    # each listed JetPack's TRT is in range
        assert all(t.supports_trt(v) for _, v in t.jetpacks)


def test_parse_version():
    assert parse_version("10.13.3.9") == (10, 13, 3, 9)
    assert parse_version("8.6.1.post1") == (8, 6, 1)
    assert parse_version("11.0.0rc1") == (11, 0, 0)
    with pytest.raises(ConfigError):
        parse_version("unknown")
