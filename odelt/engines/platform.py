"""What an engine is tied to: the TensorRT version, the GPU, the JetPack. No TensorRT import here,
so the manifest, the cache key and the refusal logic are testable on any machine.

A TensorRT plan runs only on the TensorRT version (major.minor.patch.build) and GPU model it was
built with (deploy.md §2.6); loading it elsewhere fails deep inside deserialisation with
`stdVersionRead == kSERIALIZATION_VERSION`. We record both next to the plan and refuse early.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from odelt.errors import BackendUnavailable, EngineMismatch

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
MANIFEST_SUFFIX = ".json"
MANIFEST_FORMAT = 1

# L4T release -> JetPack (deploy.md §2.8). R36.4 is shared by JetPack 6.1, 6.2 and 6.2.1.
_L4T_TO_JETPACK = {(35,): "5.1", (36, 3): "6.0", (36, 4): "6.1/6.2", (38, 2): "7.0", (38, 4): "7.1",
                   (39, 2): "7.2"}


@dataclass(frozen=True)
class Platform:
    trt_version: str               # full version string, e.g. "10.13.3.9"
    gpu_name: str                  # e.g. "NVIDIA H100 80GB HBM3", "Orin"
    compute_capability: str        # e.g. "9.0", "8.7"
    l4t: str | None = None         # Jetson Linux release, e.g. "36.4.3"; None off Jetson
    jetpack: str | None = None

    def describe(self) -> str:
        jp = f", JetPack {self.jetpack}" if self.jetpack else ""
        return f"TensorRT {self.trt_version} on {self.gpu_name} (sm {self.compute_capability}{jp})"


def read_l4t(path: Path = TEGRA_RELEASE) -> tuple[str | None, str | None]:
    """(L4T release, JetPack) from /etc/nv_tegra_release, (None, None) off Jetson.

    The file reads like `# R36 (release), REVISION: 4.3, GCID: ..., BOARD: generic, ...`."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None, None
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not m:
        return None, None
    major, rev = int(m.group(1)), m.group(2)
    minor = int(rev.split(".")[0]) if rev.split(".")[0].isdigit() else 0
    jetpack = _L4T_TO_JETPACK.get((major, minor)) or _L4T_TO_JETPACK.get((major,))
    return f"{major}.{rev}", jetpack


def query_gpu() -> tuple[str, str]:
    """(GPU name, compute capability "X.Y") of device 0, via cuda-python or nvidia-smi."""
    try:  # cuda-python >= 12.6 moved the runtime bindings to cuda.bindings
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            cudart = None
    if cudart is not None:
        err, prop = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
            return name.strip("\x00 "), f"{prop.major}.{prop.minor}"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        name, cc = (s.strip() for s in out.splitlines()[0].split(","))
        return name, cc
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        raise BackendUnavailable("no CUDA GPU found: need cuda-python (the `trt` extra) or "
                                 "nvidia-smi to identify the GPU an engine is built for") from None


def current_platform(trt_version: str) -> Platform:
    name, cc = query_gpu()
    l4t, jetpack = read_l4t()
    return Platform(trt_version, name, cc, l4t, jetpack)


def cache_key(graph: bytes, platform: Platform, options: dict[str, Any]) -> str:
    """Hash of everything that makes a plan different: the graph bytes, the TensorRT version, the
    GPU (name and compute capability) and the build options. JetPack is implied by the TensorRT
    version and the GPU, so it is recorded but not hashed."""
    h = hashlib.sha256()
    h.update(hashlib.sha256(graph).digest())
    ident = [platform.trt_version, platform.gpu_name, platform.compute_capability,
             json.dumps(options, sort_keys=True, default=str)]
    h.update(json.dumps(ident).encode())
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class EngineManifest:
    backend: str                   # "tensorrt" or "onnxruntime"
    platform: Platform
    graph_sha256: str
    cache_key: str
    options: dict[str, Any] = field(default_factory=dict)
    target: str | None = None
    format: int = MANIFEST_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineManifest:
        return cls(backend=d["backend"], platform=Platform(**d["platform"]),
                   graph_sha256=d["graph_sha256"], cache_key=d["cache_key"],
                   options=dict(d.get("options", {})), target=d.get("target"),
                   format=int(d.get("format", MANIFEST_FORMAT)))


def manifest_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + MANIFEST_SUFFIX)


def read_record_json(p: Path, missing: str) -> dict[str, Any]:
    """An engine's JSON record (every engine backend's one reader): an object of finite numbers,
    strings, lists and objects; anything else is one EngineMismatch line (`missing`: when absent)."""
    def refuse(constant: str) -> None:
        raise ValueError(f"non-finite number {constant}")

    try:
        data = json.loads(p.read_text(), parse_constant=refuse)
    except FileNotFoundError:
        raise EngineMismatch(missing) from None
    except (ValueError, UnicodeDecodeError, OSError, RecursionError) as e:
        raise EngineMismatch(f"engine record {p} is unreadable ({str(e)[:120]}); rebuild the engine") from None
    if not isinstance(data, dict):
        raise EngineMismatch(f"engine record {p}: expected a JSON object, found {type(data).__name__}; rebuild the engine")
    return data


def read_manifest(engine_path: Path) -> EngineManifest:
    p = manifest_path(engine_path)
    d = read_record_json(p, f"engine {engine_path} has no manifest {p.name}: cannot tell which "
                            "TensorRT and GPU it was built for; rebuild it")
    plat = d.get("platform")
    fields = ("trt_version", "gpu_name", "compute_capability")
    if not isinstance(plat, dict) or any(not isinstance(plat.get(k), str) for k in fields) or \
            any(plat.get(k) is not None and not isinstance(plat.get(k), str) for k in ("l4t", "jetpack")):
        raise EngineMismatch(f"engine manifest {p}: platform: expected strings {list(fields)}, found "
                             f"{plat!r:.120}; rebuild the engine")
    try:
        return EngineManifest.from_dict(d)
    except (ValueError, KeyError, TypeError) as e:
        raise EngineMismatch(f"engine manifest {p} is unreadable ({e}); rebuild the engine") from None


def check_compatible(manifest: EngineManifest, here: Platform, engine_path: Path) -> None:
    """Refuse, in one line, an engine built for another TensorRT version or GPU."""
    built = manifest.platform
    problems = []
    if built.trt_version != here.trt_version:
        problems.append("TensorRT version")
    if built.compute_capability != here.compute_capability or built.gpu_name != here.gpu_name:
        problems.append("GPU")
    if problems and built.describe() == here.describe():       # same text, different values: show them
        problems = [f"{' and '.join(problems)}: recorded {built.trt_version!r}/{built.gpu_name!r}/"
                    f"{built.compute_capability!r}, found {here.trt_version!r}/{here.gpu_name!r}/"
                    f"{here.compute_capability!r}"]
    if problems:
        raise EngineMismatch(
            f"engine {engine_path.name} was built for {built.describe()}, this machine has "
            f"{here.describe()} ({' and '.join(problems)} differ): rebuild it here with "
            "`odelt-export build BUNDLE --backend tensorrt --force`")
