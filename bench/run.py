"""Benchmark harness: every group's figures, measured in one run, into one flat JSON object.

    python bench/run.py [--quick] [--only GROUP ...] --out FILE.json

A group is a module bench/<group>.py with `run(quick: bool) -> dict[str, float | int | str]`
returning flat, uniquely named figures (prefix them with the group's topic). Register it in
GROUPS below: one line. `--quick` is the CI setting: each group must finish in under 5 minutes on
the 2-core CPU machine. The output also records, per group, its wall time and any error (a failing
group does not hide the others' figures; the exit code is 1 when one failed).
"""

from __future__ import annotations

import argparse
import importlib
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
    "deadline": "deadline",
    "latent": "latent",
    "cpu": "cpu",
}


def run_group(name: str, quick: bool, **options) -> tuple[dict, float, str | None]:
    module = importlib.import_module(GROUPS[name])
    start = time.perf_counter()
    try:
        figures = dict(module.run(quick=quick, **options))
        error = None
    except Exception as e:  # noqa: BLE001 - report it and keep the other groups' figures
        traceback.print_exc()
        figures, error = {}, f"{type(e).__name__}: {e}".splitlines()[0]
    return figures, time.perf_counter() - start, error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI setting: under 5 minutes per group")
    parser.add_argument("--only", nargs="+", choices=sorted(GROUPS), metavar="GROUP",
                        help=f"groups to run (default all: {', '.join(GROUPS)})")
    parser.add_argument("--deadline-batch", type=int, default=8, metavar="N",
                        help="deadline group: images per batch (profiled at that size; default 8)")
    parser.add_argument("--deadline-modes", nargs="+", metavar="MODE",
                        choices=["open", "open95", "closed", "anytime", "cheapest"],
                        help="deadline group: modes to run (default all; open95, closed, anytime required)")
    parser.add_argument("--deadline-trace", type=Path, metavar="FILE",
                        help="deadline group: write every mode's per-batch records to FILE (JSON)")
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT))
    out: dict = {"bench_quick": args.quick, "bench_host": platform.node(), "bench_cpus": os.cpu_count(),
                 "bench_started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    failed = False
    for name in args.only or list(GROUPS):
        print(f"== {name}", file=sys.stderr, flush=True)
        options = {"batch": args.deadline_batch, "modes": args.deadline_modes,
                   "trace": args.deadline_trace} if name == "deadline" else {}
        figures, seconds, error = run_group(name, args.quick, **options)
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
