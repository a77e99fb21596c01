"""Bench: export time, peak memory and parity at DiT-B/2 and DiT-XL/2 scale (issue 3 §5).

Each model runs in its own process (so peak RSS is that model's): build a random-weight model of the
preset (every parameter perturbed, so no zero-init layer hides errors), save it as a checkpoint,
export the bundle from that file (the CLI's path) and, with --verify, run `verify_bundle` on it.

    .venv/bin/python bench/export_scale.py --out out/bench-export-scale.json \
        [--models DiT-B/2 DiT-XL/2] [--layout both] [--verify DiT-B/2] [--cases 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_one(name: str, layout: str, verify: bool, cases: int, work: Path) -> dict:
    import torch

    from odelt.exporter import ExportOptions, VerifyOptions, export_source, verify_bundle
    from odelt.models import PRESETS, DiT, save_checkpoint

    torch.manual_seed(0)
    model = DiT(PRESETS[name]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ckpt = work / "model.safetensors"
    save_checkpoint(model, ckpt)
    del model
    layouts = ("segments", "per-length") if layout == "both" else (layout,)
    t0 = time.perf_counter()
    manifest = export_source(str(ckpt), work / "bundle", ExportOptions(layouts=layouts))
    export_s = time.perf_counter() - t0
    export_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {"model": name, "layouts": list(layouts), "export_s": round(export_s, 2),
              "peak_rss_bytes_export": export_rss, "param_bytes": manifest.param_bytes,
              "weight_bytes": manifest.weight_bytes,
              "weight_ratio": {k: round(v / manifest.param_bytes, 4)
                               for k, v in manifest.weight_bytes.items()},
              "graphs": len(manifest.graphs), "lengths": list(manifest.lengths)}
    if verify:
        t0 = time.perf_counter()
        report = verify_bundle(work / "bundle", VerifyOptions(cases=cases))
        result["verify_s"] = round(time.perf_counter() - t0, 2)
        result["verify"] = {k: report[k] for k in ("ok", "max_abs_err", "per_length", "weight_bytes",
                                                    "duplicate_initializers", "batch_sizes")}
        result["peak_rss_bytes_verify"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", nargs="+", default=["DiT-B/2", "DiT-XL/2"])
    ap.add_argument("--layout", default="both", choices=["segments", "per-length", "both"])
    ap.add_argument("--verify", nargs="*", default=["DiT-B/2"], help="models to verify as well")
    ap.add_argument("--cases", type=int, default=1)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory(prefix="odelt-bench-") as tmp:
            res = run_one(args.one, args.layout, args.one in args.verify, args.cases, Path(tmp))
        Path(args.out).write_text(json.dumps(res))
        return
    results = []
    for name in args.models:
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            cmd = [sys.executable, __file__, "--one", name, "--out", f.name, "--layout", args.layout,
                   "--cases", str(args.cases), "--verify", *args.verify]
            subprocess.run(cmd, check=True)
            results.append(json.loads(Path(f.name).read_text()))
        print(json.dumps(results[-1]), flush=True)
    out = {"bench": "export_scale", "host": platform.node(), "python": platform.python_version(),
           "cpus": __import__("os").cpu_count(), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
