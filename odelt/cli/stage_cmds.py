"""Commands of the stages between a bundle and a budget: quality (the quality table that plan,
generate --budget-ms and Triton budgets read) and tables (modulation tables the sampler feeds
instead of the conditioning graph)."""

from __future__ import annotations

import click

from odelt import validate
from odelt.cli import cli
from odelt.cli.options import NONNEG, Count, Finite
from odelt.schedules.quality import HELD_OUT


def _bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="row", disable=None, leave=False)


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--schedules", "specs", multiple=True,
              help="Schedule FILE, builtin name or heuristic KIND[:SOLVER[:STEPS]] (every length) to score "
                   "(repeatable; default: the bundle's schedules/ plus uniform Euler at 1, 2, 4, 8 steps).")
@click.option("--precision", "precisions", multiple=True,
              help="Precision to score (repeatable; default: every precision the bundle has).")
@click.option("--held-out", "n_held", type=Count(2, validate.MAX_SAMPLES), default=HELD_OUT, show_default=True,
              help="Held-out noise samples the errors are measured on.")
@click.option("--decoder", "decoders", multiple=True,
              help="Latent bundles: decoder kind to list in the decoder section (repeatable; default: all).")
@click.option("--model", "source", help="The source model (teacher trajectories); default: the manifest's.")
@click.option("--seed", type=NONNEG, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace the bundle's quality.json.")
def quality(bundle: str, specs: tuple[str, ...], precisions: tuple[str, ...], n_held: int,
            decoders: tuple[str, ...], source: str | None, seed: int, force: bool) -> None:
    """Write BUNDLE's quality table: every (schedule, precision) run through the bundle's graphs on
    held-out noise, scored against the source model's 128-step teacher."""
    from odelt.bundle.bundle import open_bundle
    from odelt.errors import ConfigError
    from odelt.runtime.budget.plans import QUALITY
    from odelt.schedules import quality as q

    manifest = open_bundle(bundle)
    if (manifest.root / QUALITY).exists() and not force:
        raise ConfigError(f"{manifest.root / QUALITY} exists; pass --force to replace it")
    precs = q.check_precisions(manifest, precisions)
    log = lambda msg: click.echo(msg, err=True)                      # noqa: E731
    schedules = q.resolve_schedules(manifest, specs) if specs else q.default_schedules(manifest, log)
    model = q.quality_model(manifest, source)
    with _bar(len(schedules) * len(precs), "quality") as bar:
        def step(what: str) -> None:
            bar.set_postfix_str(what)
            bar.update(1)
        path, rows = q.make_quality(manifest, model, schedules, precs, n_held, seed, decoders or None, step)
    best = min(rows, key=lambda r: r["error"])
    click.echo(f"{path}: {len(rows)} rows ({len(rows) // len(precs)} schedules x {list(precs)}), "
               f"{n_held} held-out samples; lowest error {best['name']} {best['error']:.4f}")


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--schedule", "spec", required=True,
              help="Schedule FILE, builtin name or heuristic KIND[:SOLVER[:STEPS]] (at the full length).")
@click.option("--guidance-scale", type=Finite(0.0), help="The scale generate will run with (checked against "
              "the schedule's and the bundle's; host-side guidance never uses tables).")
@click.option("--class", "classes", type=Count(0), multiple=True,
              help="Class to tabulate (repeatable; default: every class, or the null class of an "
                   "unconditional model).")
def tables(bundle: str, spec: str, guidance_scale: float | None, classes: tuple[int, ...]) -> None:
    """Write modulation tables for one schedule into BUNDLE: the conditioning graph's outputs at every
    step, per length and class, so a device needs no conditioning weights."""
    from odelt.bundle.bundle import open_bundle
    from odelt.exporter.tables import add_schedule_tables, schedule_steps, table_classes
    from odelt.ode.heuristics import resolve_schedule

    manifest = open_bundle(bundle)
    schedule = resolve_schedule(spec, max(manifest.lengths))
    per_class = len({n for _, n, _ in schedule_steps(schedule)})
    with _bar(per_class * len(table_classes(manifest, classes)), "tables") as bar:
        def step(what: str) -> None:
            bar.set_postfix_str(what)
            bar.update(1)
        names = add_schedule_tables(manifest.root, schedule, classes, guidance_scale, progress=step)
    click.echo(f"{manifest.root}: {len(names)} tables for {schedule.name or spec}: {', '.join(names)}")
