"""The one-command demo."""

from __future__ import annotations

from pathlib import Path

import click

from odelt.cli import cli
from odelt.cli.options import COUNT, POSITIVE


@cli.command()
@click.option("--out", "out", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the bundle, report.md, pareto.png and sample grids (reused when present).")
@click.option("--model", "--source", "source", default="builtin:digits", show_default=True,
              help="Model to run the pipeline on (builtin:NAME or a checkpoint; --source is the old name).")
@click.option("--vae", "vaes", multiple=True, metavar="KIND:PATH",
              help="Decoder stage of a latent checkpoint, as for `export --vae` (a latent builtin model "
                   "brings its own).")
@click.option("--relearn", is_flag=True, help="Re-learn the LD3/AMED/per-step-length schedules instead of "
              "using the shipped ones.")
@click.option("--budget-ms", "budgets", type=POSITIVE, multiple=True,
              help="Latency budgets per batch (repeatable; default: three spread over the candidates).")
@click.option("--batch", type=COUNT, default=8, show_default=True, help="Images per batch (1..8, the bundle's range).")
@click.option("--force", is_flag=True, help="Rebuild every stage, also those OUT holds for another model "
              "(without it, a different --source than OUT was built from is refused).")
def demo(out: str, source: str, vaes: tuple[str, ...], relearn: bool, budgets: tuple[float, ...], batch: int,
         force: bool) -> None:
    """export -> quantize -> schedules -> build -> profile -> plan -> generate, with a report."""
    from odelt.pipeline.demo import DemoOptions, run_demo

    vae_options = None
    if vaes:
        from odelt.latent.vae import parse_vae_options

        vae_options = parse_vae_options(vaes)
    opts = DemoOptions(out=Path(out), source=source, relearn=relearn, budgets_ms=budgets or None, batch=batch,
                       force=force, vaes=vae_options)
    res = run_demo(opts, log=lambda msg: click.echo(msg, err=True))
    for r in res.facts["runs"]:
        now = f" (re-profiled just before: {r['predicted_now_ms']:.2f} ms)" if r.get("predicted_now_ms") else ""
        click.echo(f"budget {r['budget_ms']:g} ms: {r['plan']} predicted {r['predicted_ms']:.2f} ms{now}, "
                   f"measured {r['measured_ms']:.2f} ms, held-out RMSE {r['error']:.4f}")
    if res.facts.get("latent_quality"):
        from odelt.pipeline.latent_stage import headline_text

        click.echo(f"latent quality: {headline_text(res.facts['latent_quality'])}")
    click.echo(f"wrote {res.report} ({res.facts['seconds']} s)")
