"""Bench: what opening a bundle costs, as every command does at start-up (issue 12 §2).

Standalone (it needs a big bundle, which the quick CI groups cannot afford to export):

    .venv/bin/python bench/bundle_open.py BUNDLE [--repeats 5] [--out FILE.json]

`bundle_open_ms`: `open_bundle(BUNDLE)` as generate / plan / profile / quantize / build do (size and
mtime of every listed file; no hashing while nothing was touched); `bundle_verify_ms`: with
`verify=True` as `inspect` and `verify` do (sha256 of every listed file, and a scan for unlisted
graphs). Medians over repeats, measured side by side in one process (the page cache is warm after
the first repeat, so the verify figure is hashing speed, not disk speed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from odelt import open_bundle  # noqa: E402


def measure(bundle: Path, repeats: int) -> dict:
    opened, verified = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        b = open_bundle(bundle)
        opened.append(time.perf_counter() - t)
        t = time.perf_counter()
        open_bundle(bundle, verify=True)
        verified.append(time.perf_counter() - t)
    total = sum(r["size"] or 0 for r in b.files.values())
    return {"bundle_files": len(b.files), "bundle_listed_bytes": total, "bundle_repeats": repeats,
            "bundle_open_ms": round(1e3 * statistics.median(opened), 3),
            "bundle_verify_ms": round(1e3 * statistics.median(verified), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    figures = measure(args.bundle, max(1, args.repeats))
    text = json.dumps(figures, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
