"""Build targets as data: what differs between a desktop GPU and each Jetson module.

Facts (NVIDIA's JetPack release notes and TensorRT support matrices: versions, DLA, memory):
- JetPack 5.1.x ships TensorRT 8.5.2 (no ONNX LayerNormalization: export opset <= 16), 6.0 ships
  8.6.2, 6.1/6.2 ship 10.3, 7.0/7.1 (Thor only) 10.13.3, 7.2 10.16; TensorRT 11 reaches Jetson only
  at 11.4.1 with JetPack >= 7.2.2 and only on AGX Orin and Thor.
- DLA: Orin Nano and Thor have none, Orin NX 16 GB and AGX Orin two (NX 8 GB one). TensorRT 10.7
  was the last 10.x with DLA on Orin; 11.4.1 brings it back on AGX Orin only. DLA never takes
  attention (MatMul/Softmax): for a DiT only a convolutional patch embedding could go there.
- Jetson memory is unified LPDDR shared with the OS and the runtime, so the builder's tactic
  workspace is capped on the 8/16 GB modules (an 8 GB Orin Nano leaves about 5 GB usable).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from odelt.errors import ConfigError

Version = tuple[int, ...]
GiB = 1 << 30

# Below this TensorRT version the ONNX parser has no LayerNormalization: graphs must use opset 16,
# where the exporter decomposes LayerNorm into primitive ops (JetPack 5).
LAYERNORM_OP_TRT: Version = (8, 6)
LEGACY_OPSET = 16


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    trt_min: Version                 # oldest TensorRT this target ships or we support on it
    trt_max: Version                 # newest TensorRT known for it (inclusive, by major.minor)
    jetpacks: tuple[tuple[str, Version], ...]  # (JetPack release, TensorRT it ships)
    unified_memory_gb: int | None    # None: discrete GPU with its own memory
    workspace_bytes: int | None      # builder tactic workspace cap; None = TensorRT's default
    dla_cores: int                   # 0: no DLA on this module
    dla_trt: tuple[tuple[Version, Version], ...] = ()  # TensorRT ranges that support its DLA

    def supports_trt(self, version: Version) -> bool:
        return self.trt_min <= version[:2] <= self.trt_max

    def dla_available(self, version: Version) -> bool:
        return self.dla_cores > 0 and any(lo <= version[:2] <= hi for lo, hi in self.dla_trt)

    def max_opset(self, version: Version) -> int | None:
        """Highest ONNX opset a graph may use for this TensorRT, None when no limit applies."""
        return LEGACY_OPSET if version[:2] < LAYERNORM_OP_TRT else None


_ORIN_JP = (("5.1", (8, 5)), ("6.0", (8, 6)), ("6.1", (10, 3)), ("6.2", (10, 3)), ("7.2", (10, 16)))
_ORIN_DLA = (((8, 5), (10, 7)),)

TARGETS: dict[str, Target] = {
    t.name: t for t in (
        Target("desktop", "discrete NVIDIA GPU (x86_64/SBSA), TensorRT 8.6 to 11.x",
               trt_min=(8, 6), trt_max=(11, 99), jetpacks=(), unified_memory_gb=None,
               workspace_bytes=None, dla_cores=0),
        Target("orin-nano", "Jetson Orin Nano 8 GB (8 SM Ampere, no DLA)",
               trt_min=(8, 5), trt_max=(10, 16), jetpacks=_ORIN_JP, unified_memory_gb=8,
               workspace_bytes=1 * GiB, dla_cores=0),
        Target("orin-nx", "Jetson Orin NX 8/16 GB (8 SM Ampere, 1-2 DLA)",
               trt_min=(8, 5), trt_max=(10, 16), jetpacks=_ORIN_JP, unified_memory_gb=16,
               workspace_bytes=2 * GiB, dla_cores=2, dla_trt=_ORIN_DLA),
        Target("agx-orin", "Jetson AGX Orin 32/64 GB (16 SM Ampere, 2 DLA)",
               trt_min=(8, 5), trt_max=(11, 99), jetpacks=_ORIN_JP + (("7.2.2", (11, 4)),),
               unified_memory_gb=64, workspace_bytes=4 * GiB, dla_cores=2,
               dla_trt=_ORIN_DLA + (((11, 4), (11, 99)),)),
        Target("thor", "Jetson AGX Thor (Blackwell, no DLA, 128 GB)",
               trt_min=(10, 13), trt_max=(11, 99),
               jetpacks=(("7.0", (10, 13)), ("7.1", (10, 13)), ("7.2", (10, 16)), ("7.2.2", (11, 4))),
               unified_memory_gb=128, workspace_bytes=None, dla_cores=0),
    )
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ConfigError(f"unknown target {name!r}: expected one of {', '.join(TARGETS)}") from None


def parse_version(text: str) -> Version:
    """'10.13.3.9' -> (10, 13, 3, 9); non-numeric tails ('10.3.0.post1') are dropped."""
    parts: list[int] = []
    for piece in text.split("."):
        m = re.match(r"\d+", piece)   # leading digits only: "0rc1" -> 0
        if not m:
            break
        parts.append(int(m.group()))
        if m.end() < len(piece):     # a suffix ends the numeric part
            break
    if not parts:
        raise ConfigError(f"cannot read a version number from {text!r}")
    return tuple(parts)
