"""Command `quantize`: FP16 or trajectory-calibrated INT8 variants of a bundle's graphs."""

from __future__ import annotations

import json

import click

from odelt.calibration import CALIB_METHODS, INT8_FLAVOURS, QUANTIZED_PRECISIONS
from odelt.cli import cli
from odelt.cli.options import NONNEG, POSITIVE, SAMPLES


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--precision", type=click.Choice(QUANTIZED_PRECISIONS), required=True)
@click.option("--calib-samples", type=SAMPLES, default=32, show_default=True,
              help="Noise samples; each is integrated with every schedule at every length.")
@click.option("--calib-schedule", "schedules", multiple=True,
              help="Schedule NAME|FILE to calibrate along (repeatable; default uniform:euler:4 and :8).")
@click.option("--eval-samples", type=SAMPLES, default=64, show_default=True, help="Held-out noise for the accuracy guard.")
@click.option("--max-rmse", type=POSITIVE, default=None, help="Final-sample RMSE limit (default fp16 0.01, int8 0.05).")
@click.option("--max-fd-rel", type=POSITIVE, default=0.10, show_default=True, help="FD-digits relative change limit.")
@click.option("--calib-method", type=click.Choice(CALIB_METHODS), default=CALIB_METHODS[0],
              show_default=True)
@click.option("--int8-flavour", "flavour", type=click.Choice(INT8_FLAVOURS), default=INT8_FLAVOURS[0], show_default=True,
              help="INT8 only. trt: signed symmetric Q/DQ for TensorRT; cpu: uint8 activations and 7-bit weights, "
                   "which ONNX Runtime CPU fuses into integer matmuls (TensorRT cannot build it).")
@click.option("--seed", type=NONNEG, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
def quantize(bundle: str, precision: str, calib_samples: int, schedules: tuple[str, ...], eval_samples: int,
             max_rmse: float | None, max_fd_rel: float, calib_method: str, flavour: str, seed: int,
             as_json: bool) -> None:
    """Add an FP16 or INT8 (Q/DQ) variant to BUNDLE, guarded against FP32 on the final samples."""
    from odelt.calibration.quantize import DEFAULT_SCHEDULES, QuantizeOptions, quantize_bundle

    options = QuantizeOptions(precision=precision, calib_samples=calib_samples,
                              schedules=tuple(schedules) or DEFAULT_SCHEDULES, eval_samples=eval_samples,
                              max_rmse=max_rmse, max_fd_rel=max_fd_rel, method=calib_method, seed=seed,
                              flavour=flavour)
    report = quantize_bundle(bundle, options)
    if as_json:
        click.echo(json.dumps(report, indent=1, default=float))
        return
    m, th = report["metrics"], report["thresholds"]
    kind = f"{precision} ({flavour} flavour)" if precision == "int8" else precision
    click.echo(f"{bundle}: {kind} variant written to {bundle}/{precision}/ (report.json)")
    click.echo(f"  final samples vs FP32: RMSE {m['rmse']:.4g} pooled, {m['rmse_worst']:.4g} worst run "
               f"(limit {th['rmse']:g})")
    if "fd_rel" in m:
        click.echo(f"  FD-digits: fp32 {m['fd_fp32']:.4g}, {precision} {m['fd']:.4g}, rel. change "
                   f"{m['fd_rel']:.3g} (limit {th['fd_rel']:g})")
    decoders = report.get("decoders", {})
    for name, g in report["graphs"].items():
        if name not in decoders:
            low = g.get("int8_linears", g.get("fp16_linears", []))
            click.echo(f"  {name}: {len(low)} block linears in {precision}")
    for name, d in decoders.items():
        acc, act = d.get("accuracy"), d["activations"]
        vs = (f"; vs FP32 decoder: RMSE {acc['rmse']:.3g}, max error {acc['max_abs_err']:.3g}, PSNR "
              f"{acc['psnr_db']:.1f} dB on {acc['samples']} latents") if acc else ""
        click.echo(f"  {name}: decoder in {d['precision']}{vs}; largest |activation| {act['max']:.4g} "
                   f"(FP16 headroom {act['fp16_headroom']:.3g}x)" + (f"\n    {d['note']}" if "note" in d else ""))
    fell = report["fallback"]
    click.echo(f"  fell back to FP32: {len(fell)} layer(s)" + "".join(
        f"\n    {f['graph']}:{f['node']} (layer error {f['layer_error']:.3g})" for f in fell))
