"""Commands about engines: build."""

from __future__ import annotations

from pathlib import Path

import click

from odelt.cli import cli
from odelt.cli.options import Count


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--backend", required=True, help="ort | tensorrt")
@click.option("--target", default="desktop", show_default=True,
              help="TensorRT target preset: desktop | orin-nano | orin-nx | agx-orin | thor")
@click.option("--precision", default="fp32", show_default=True,
              help="fp32 | fp16 | int8 (fp16/int8 graphs come from `odelt-export quantize`)")
@click.option("--format", "ort_format", default="onnx", show_default=True,
              help="ORT engine file: onnx (optimised ONNX) | ort (flatbuffer)")
@click.option("--opt-level", type=Count(0, 5), default=3, show_default=True,
              help="TensorRT builder optimisation level 0-5")
@click.option("--dla", is_flag=True, help="TensorRT: put convolutions on the DLA (targets that have one)")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="TensorRT engine and timing cache (default $ODELT_ENGINE_CACHE or ~/.cache/odelt/trt)")
@click.option("--force", is_flag=True, help="rebuild an engine set that already exists")
def build(bundle: str, backend: str, target: str, precision: str, ort_format: str, opt_level: int,
          dla: bool, cache_dir: str | None, force: bool) -> None:
    """Build ONNX Runtime or TensorRT engines for every graph of BUNDLE."""
    from odelt.engines.build import BuildRequest, build_bundle

    req = BuildRequest(backend=backend, target=target, precision=precision, force=force,
                       ort_format=ort_format, optimization_level=opt_level, use_dla=dla,
                       cache_dir=Path(cache_dir) if cache_dir else None)
    entry = build_bundle(bundle, req)
    facts = ", ".join(f"{k} {v}" for k, v in entry["built"].items() if v is not None)
    click.echo(f"{bundle}: built {len(entry['graphs'])} {req.set_name} engines in {entry['dir']} ({facts})")
