"""Commands about engines: build."""

from __future__ import annotations

from pathlib import Path

import click

from odelt.cli import cli
from odelt.cli.options import Count
from odelt.engines.build import BACKENDS, BUILD_PRECISIONS, OV_HINTED
from odelt.engines.rtx_targets import RTX_TARGETS
from odelt.engines.targets import TARGETS


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--backend", required=True, help=" | ".join(BACKENDS))
@click.option("--target", "targets", multiple=True,
              help=f"TensorRT: one preset ({' | '.join(TARGETS)}; default desktop). "
                   f"TensorRT-RTX: one or more of {' | '.join(RTX_TARGETS)} (default portable)")
@click.option("--precision", default="fp32", show_default=True,
              help=f"{' | '.join(BUILD_PRECISIONS)} (fp16/int8 graphs come from `odelt-export quantize`)")
@click.option("--format", "ort_format", default="onnx", show_default=True,
              help="ORT engine file: onnx (optimised ONNX) | ort (flatbuffer)")
@click.option("--opt-level", type=Count(0, 5), default=3, show_default=True,
              help="TensorRT builder optimisation level 0-5")
@click.option("--dla", is_flag=True, help="TensorRT: put convolutions on the DLA (targets that have one)")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="TensorRT engine and timing cache (default $ODELT_ENGINE_CACHE or ~/.cache/odelt/trt)")
@click.option("--device", default="CPU", show_default=True,
              help="OpenVINO: CPU | GPU | NPU | AUTO (GPU and NPU are untested code paths)")
@click.option("--max-rmse", type=float, default=None,
              help="OpenVINO bf16/fp16: the accuracy guard's limit on final samples vs FP32 (default 0.01)")
@click.option("--force", is_flag=True, help="rebuild an engine set that already exists")
def build(bundle: str, backend: str, targets: tuple[str, ...], precision: str, ort_format: str, opt_level: int,
          dla: bool, cache_dir: str | None, device: str, max_rmse: float | None, force: bool) -> None:
    """Build ONNX Runtime, TensorRT, TensorRT-RTX or OpenVINO engines for every graph of BUNDLE."""
    from odelt.engines.build import BuildRequest, build_bundle, describe
    from odelt.errors import ConfigError

    if backend != "tensorrt-rtx" and len(targets) > 1:
        raise ConfigError(f"--backend {backend} takes one --target, found {len(targets)}: {', '.join(targets)}")
    rtx = backend == "tensorrt-rtx"
    req = BuildRequest(backend=backend, target=targets[0] if targets and not rtx else "desktop",
                       rtx_targets=(targets or ("portable",)) if rtx else ("portable",), precision=precision, force=force,
                       ort_format=ort_format, optimization_level=opt_level, use_dla=dla,
                       cache_dir=Path(cache_dir) if cache_dir else None, device=device)
    guard = None
    if backend == "openvino" and precision in OV_HINTED:     # lowered by OpenVINO: checked on real samples
        from odelt.calibration.ov_guard import OvGuard

        guard = OvGuard.for_bundle(bundle, req, max_rmse)
    click.echo(f"{bundle}: {describe(req, build_bundle(bundle, req, guard))}")
