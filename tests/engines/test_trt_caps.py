"""The capability table and the TensorRT-RTX targets: data, checked without any TensorRT."""

import pytest

from odelt.engines.rtx_targets import (DEFAULT_MASK, compute_capabilities, expected_mask, get_rtx_targets,
                                       set_label)
from odelt.engines.trt_caps import CAPS, LIBRARIES, capabilities
from odelt.errors import BackendUnavailable, ConfigError


def test_rtx_versions_never_read_as_old_tensorrt():
    rtx = capabilities("tensorrt-rtx", (1, 7, 1, 116))
    assert rtx.strongly_typed and rtx.creation_flags == () and not rtx.dla and not rtx.timing_cache
    assert rtx.compute_capabilities and rtx.runtime_cache and not rtx.bound_to_build_gpu
    assert capabilities("tensorrt", (8, 6, 1)).creation_flags == ("EXPLICIT_BATCH",)
    assert capabilities("tensorrt", (8, 6, 1)).precision_flags["int8"] == ("FP16", "INT8")
    assert capabilities("tensorrt", (10, 3, 0)).creation_flags == ("STRONGLY_TYPED",)
    assert not capabilities("tensorrt", (8, 5, 2)).optimization_level
    with pytest.raises(BackendUnavailable, match="TensorRT-RTX 2.0 is not supported: expected 1.0-1.99"):
        capabilities("tensorrt-rtx", (2, 0))
    with pytest.raises(BackendUnavailable, match="TensorRT 1.7.1 is not supported"):
        capabilities("tensorrt", (1, 7, 1))


def test_every_row_names_a_known_library_and_rows_do_not_overlap():
    for name, lo, hi, _ in CAPS:
        assert name in LIBRARIES and lo <= hi
    for i, (a, alo, ahi, _) in enumerate(CAPS):
        for b, blo, bhi, _ in CAPS[i + 1:]:
            assert a != b or ahi < blo or bhi < alo


def test_rtx_targets():
    assert [t.name for t in get_rtx_targets(())] == ["portable"]
    assert compute_capabilities(get_rtx_targets(("sm89", "sm86", "sm89"))) == ("SM86", "SM89")
    assert expected_mask(()) == DEFAULT_MASK and expected_mask(("SM86", "SM89")) == 0x0C
    assert set_label(get_rtx_targets(["sm89", "sm86"])) == "sm86+sm89"
    with pytest.raises(ConfigError, match="portable` already covers"):
        get_rtx_targets(["portable", "sm86"])
    with pytest.raises(ConfigError, match="unknown TensorRT-RTX target 'sm61'.*portable, sm75"):
        get_rtx_targets(["sm61"])
    with pytest.raises(ConfigError, match="no target for the `desktop` preset.*--backend tensorrt"):
        get_rtx_targets(["desktop"])
