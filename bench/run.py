"""Benchmark harness: every group's figures, measured in one run, into one flat JSON object.

    python bench/run.py [--smoke | --quick] [--only GROUP ...] --out FILE.json

A group is a module bench/<group>.py with `run(quick: bool = False, smoke: bool = False) ->
dict[str, float | int | str]` returning flat, uniquely named figures (prefix them with the group's
topic; every key is documented in bench/README.md, which tests/test_bench.py checks). Register
it in GROUPS below: one line. Three settings:

  --smoke  tiny sizes, every group together in a few minutes on the 2-core CPU machine: the test
           suite runs it, so a group that raises fails CI. Its figures only prove the code runs.
  --quick  each group under 5 minutes on the 2-core machine.
  (none)   the sizes the README's figures come from.

A group without a `smoke` parameter is an error. The output also records, per group, its wall time
and any error (a failing group does not hide the others' figures; the exit code is 1 when one
failed), and the CPU's instruction sets (`bench_cpu_isa`).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# group name -> module (under bench/). Add yours here.
GROUPS: dict[str, str] = {
    "runtime": "runtime",
    "precision": "precision",
    "schedules": "schedules",
    "engines": "engines",
    "planner": "planner",
    "serving": "serving",
    "serving_decode": "serving_decode",
    "deadline": "deadline",
    "latent": "latent",
    "cpu": "cpu",
}


# Instruction sets a figure may depend on (GEMM kernels, INT8 dot products), as /proc/cpuinfo names them.
ISA = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16",
       "amx_int8", "asimd", "asimddp", "sve")


def cpu_isa() -> list[str]:
    """The instruction sets above that this CPU reports (empty where /proc/cpuinfo is not readable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return [f for f in ISA if f in flags]


def run_group(name: str, quick: bool, smoke: bool = False, **options) -> tuple[dict, float, str | None]:
    module = importlib.import_module(GROUPS[name])
    start = time.perf_counter()
    try:
        if "smoke" not in inspect.signature(module.run).parameters:
            raise TypeError(f"group {name} has no smoke setting: expected run(quick, smoke) in bench/{GROUPS[name]}.py")
        figures = dict(module.run(quick=quick or smoke, smoke=smoke, **options))
        error = None
    except Exception as e:  # noqa: BLE001 - report it and keep the other groups' figures
        traceback.print_exc()
        figures, error = {}, f"{type(e).__name__}: {e}".splitlines()[0]
    return figures, time.perf_counter() - start, error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    setting = parser.add_mutually_exclusive_group()
    setting.add_argument("--smoke", action="store_true", help="tiny sizes: every group in a few minutes (the tests run it)")
    setting.add_argument("--quick", action="store_true", help="under 5 minutes per group")
    parser.add_argument("--only", nargs="+", choices=sorted(GROUPS), metavar="GROUP",
                        help=f"groups to run (default all: {', '.join(GROUPS)})")
    parser.add_argument("--deadline-batch", type=int, default=8, metavar="N",
                        help="deadline group: images per batch (profiled at that size; default 8)")
    parser.add_argument("--deadline-modes", nargs="+", metavar="MODE",
                        choices=["open", "open95", "closed", "anytime", "cheapest", "nofinish"],
                        help="deadline group: modes to run (default all; open95, closed, anytime required)")
    parser.add_argument("--deadline-trace", type=Path, metavar="FILE",
                        help="deadline group: write every mode's per-batch records to FILE (JSON)")
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT))
    out: dict = {"bench_quick": args.quick, "bench_smoke": args.smoke, "bench_host": platform.node(),
                 "bench_cpus": os.cpu_count(), "bench_cpu": platform.processor() or platform.machine(),
                 "bench_cpu_isa": cpu_isa(),
                 "bench_started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    failed = False
    for name in args.only or list(GROUPS):
        print(f"== {name}", file=sys.stderr, flush=True)
        options = {"batch": args.deadline_batch, "modes": args.deadline_modes,
                   "trace": args.deadline_trace} if name == "deadline" else {}
        figures, seconds, error = run_group(name, args.quick, args.smoke, **options)
        clash = sorted(set(figures) & set(out))
        if clash:
            error = error or f"figure names already used by another group: {clash}"
        out.update({k: v for k, v in figures.items() if k not in clash})
        out[f"bench_seconds_{name}"] = round(seconds, 1)
        if error:
            out[f"bench_error_{name}"] = error
            failed = True
    write_json(args.out, out)
    print(json.dumps(out, indent=1))
    return 1 if failed else 0


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
