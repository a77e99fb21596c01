"""TensorRT-RTX build targets as data: which compute capabilities a plan is compiled for.

TensorRT-RTX's `ComputeCapability` enum has SM75, SM80, SM86, SM89, SM120 and SM121 (plus CURRENT,
which needs a GPU at build time, so it is not offered). With none set, a plan runs on 8.0, 8.6, 8.9
and 12.0 "and later" (the library's portable default); Turing (7.5) only when it is the only target,
and Turing has no FP32 GEMM, so FP32 graphs fail to build for sm75. There is no target for Jetson
Orin (sm87), Hopper (sm90), data-centre Blackwell (sm100) or Thor (sm110): those GPUs take the
`tensorrt` backend, built on the device.

Byte 0x20 of a plan's 64-byte header is a bitmask of the targets it was built for (observed with
TensorRT-RTX 1.7.1, undocumented; odelt/engines/rtx.py checks it against this table and a real
build in the test suite checks that the table still matches the library).
"""

from __future__ import annotations

from dataclasses import dataclass

from odelt.errors import ConfigError


@dataclass(frozen=True)
class ComputeTarget:
    enum: str          # tensorrt_rtx.ComputeCapability member
    cc: str            # compute capability "X.Y"
    mask: int          # its bit in the plan header
    example: str


COMPUTE: dict[str, ComputeTarget] = {c.enum: c for c in (
    ComputeTarget("SM75", "7.5", 0x01, "Turing, RTX 2080 Ti (FP16 only)"),
    ComputeTarget("SM80", "8.0", 0x02, "Ampere A100-class"),
    ComputeTarget("SM86", "8.6", 0x04, "Ampere RTX 30xx / A-series workstation"),
    ComputeTarget("SM89", "8.9", 0x08, "Ada RTX 40xx (FP8 GEMM)"),
    ComputeTarget("SM120", "12.0", 0x10, "Blackwell RTX 50xx"),
    ComputeTarget("SM121", "12.1", 0x20, "Blackwell GB10 (DGX Spark)"),
)}
# The library's default (no capability set) writes this mask: the bits of SM80-SM121 plus 0x40.
DEFAULT_MASK = 0x7E


@dataclass(frozen=True)
class RtxTarget:
    name: str
    description: str
    capabilities: tuple[str, ...]      # ComputeCapability names; () = the library's default set

    @property
    def covers(self) -> tuple[str, ...]:
        """Compute capabilities ("X.Y") a plan for this target runs on."""
        names = self.capabilities or ("SM80", "SM86", "SM89", "SM120", "SM121")
        return tuple(COMPUTE[n].cc for n in names)


RTX_TARGETS: dict[str, RtxTarget] = {t.name: t for t in (
    RtxTarget("portable", "every Ampere-and-later target (the library's default: 8.0, 8.6, 8.9, 12.0+)", ()),
    *(RtxTarget(f"sm{c.cc.replace('.', '')}", c.example, (c.enum,)) for c in COMPUTE.values()),
)}

# Names a user may try that TensorRT-RTX cannot target, and what to use instead.
NOT_RTX: dict[str, str] = {
    "sm87": "Jetson Orin (sm87)", "orin-nano": "Jetson Orin (sm87)", "orin-nx": "Jetson Orin (sm87)",
    "agx-orin": "Jetson Orin (sm87)", "orin": "Jetson Orin (sm87)",
    "sm90": "Hopper (sm90: H100/H200)", "hopper": "Hopper (sm90: H100/H200)",
    "h100": "Hopper (sm90: H100/H200)", "h200": "Hopper (sm90: H100/H200)",
    "sm100": "data-centre Blackwell (sm100)", "sm110": "Jetson Thor (sm110)", "thor": "Jetson Thor (sm110)",
    "desktop": "the `desktop` preset (a TensorRT target)",
}


def get_rtx_targets(names: tuple[str, ...] | list[str]) -> tuple[RtxTarget, ...]:
    """The targets named, refusing in one line a GPU TensorRT-RTX has no target for."""
    out = []
    for name in names or ("portable",):
        key = name.lower()
        if key in NOT_RTX:
            raise ConfigError(f"TensorRT-RTX has no target for {NOT_RTX[key]}: build with `--backend tensorrt` "
                              "on the device instead")
        if key not in RTX_TARGETS:
            raise ConfigError(f"unknown TensorRT-RTX target {name!r}: expected one of {', '.join(RTX_TARGETS)}")
        out.append(RTX_TARGETS[key])
    if len(out) > 1 and any(not t.capabilities for t in out):
        raise ConfigError("target `portable` already covers every TensorRT-RTX target: name it alone")
    return tuple(out)


def compute_capabilities(targets: tuple[RtxTarget, ...]) -> tuple[str, ...]:
    """ComputeCapability names to set, sorted by capability, no repeats; () for the default."""
    names = {n for t in targets for n in t.capabilities}
    return tuple(sorted(names, key=lambda n: COMPUTE[n].mask))


def expected_mask(capabilities: tuple[str, ...]) -> int:
    if not capabilities:
        return DEFAULT_MASK
    mask = 0
    for n in capabilities:
        mask |= COMPUTE[n].mask
    return mask


def set_label(targets: tuple[RtxTarget, ...]) -> str:
    return "+".join(sorted({t.name for t in targets}))
