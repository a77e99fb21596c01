"""The demo builds the OpenVINO precisions this CPU runs as asked: fp32 (and int8) always, bf16
only where the CPU has BF16 instructions. Both branches on real builds, under a FAKE CPU-ISA probe
(odelt.engines.openvino.cpu_isa monkeypatched): an AVX2-only CPU and one with AMX."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("openvino", reason="OpenVINO (the `openvino` extra) is not installed")

from odelt.bundle.bundle import open_bundle  # noqa: E402
from odelt.engines import openvino as ove  # noqa: E402
from odelt.pipeline.ov_stage import stage_build_openvino  # noqa: E402
from tests.openvino_bundle import exported_bundle  # noqa: E402

FAKE_AVX2 = ("sse4_2", "avx", "avx2", "fma", "f16c")                     # an AMD EPYC of these machines
FAKE_AMX = (*FAKE_AVX2, "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def test_native_precisions_follow_the_instruction_sets():
    assert ove.native_precisions(FAKE_AVX2) == ("fp32", "int8")
    assert ove.native_precisions(FAKE_AMX) == ("fp32", "int8", "bf16")
    assert ove.native_precisions(("avx2", "avx512_bf16")) == ("fp32", "int8", "bf16")     # Cooper Lake: no AMX
    assert ove.native_precisions((*FAKE_AMX, "avx512_fp16", "amx_fp16")) == ("fp32", "int8", "bf16", "fp16")


@pytest.mark.parametrize("isa", [FAKE_AVX2, FAKE_AMX], ids=["fake-avx2", "fake-amx"])
def test_the_demo_builds_bf16_only_on_a_cpu_with_bf16(tmp_path_factory, tmp_path, monkeypatch, isa):
    monkeypatch.setattr(ove, "cpu_isa", lambda *a: isa)                   # the FAKE ISA probe
    root = tmp_path / "b"
    shutil.copytree(exported_bundle(tmp_path_factory), root)
    lines: list[str] = []
    stage_build_openvino(("fp32",), open_bundle(root), lines.append)
    sets = open_bundle(root).engine_sets
    if "amx_bf16" in isa:
        assert sorted(sets) == ["openvino-cpu-bf16", "openvino-cpu-fp32"]
        assert sets["openvino-cpu-bf16"]["built"]["cpu_isa"] == list(isa) and "guard" in sets["openvino-cpu-bf16"]["built"]
        assert not [s for s in lines if "no openvino bf16 set" in s]
    else:
        assert sorted(sets) == ["openvino-cpu-fp32"]
        assert any("no openvino bf16 set: this CPU has none of avx512_bf16, amx_bf16" in s for s in lines)
