"""Commands about sampling schedules: schedule (learn or compute one), evaluate (held-out error)."""

from __future__ import annotations

import click

from odelt import validate
from odelt.cli import cli
from odelt.cli.options import COUNT, NONNEG, Count


def _load(source: str, config_file: str | None):
    from odelt.models import load_checkpoint
    from odelt.fileio import file_hash
    from odelt.models.checkpoint import resolve_source
    from odelt.models.config_io import read_config_file

    model = load_checkpoint(source, read_config_file(config_file) if config_file else None).eval()
    return model, file_hash(resolve_source(source))


def _dt_mode(value: str) -> str | int:
    if value in ("step", "auto"):
        return value
    return validate.count("--dt-base", value, 0, 7) if value.strip().isdigit() else _bad_dt(value)


def _bad_dt(value: str) -> int:
    from odelt.errors import ConfigError

    raise ConfigError(f"--dt-base: expected 'step', 'auto' or a level 0..7, found {value!r}")


@cli.command()
@click.argument("source")
@click.option("--method", default="ld3", show_default=True,
              help="ld3 | amed | a heuristic grid (uniform, shifted, cosine).")
@click.option("--solver", default="euler", show_default=True,
              help="Solver the schedule is for (amed: 'amed' = AMED-Solver, euler/ipndm = AMED-Plugin).")
@click.option("--nfe", type=Count(1, validate.MAX_STEPS), help="Network calls per sample (optional with --lengths auto).")
@click.option("--length", type=COUNT, help="One length for every step (default: the full depth).")
@click.option("--lengths", "lengths_mode", type=click.Choice(["auto"]), help="Search per-step lengths.")
@click.option("--block-budget", type=COUNT, help="With --lengths auto: at most this many block evaluations.")
@click.option("--dt-base", "dt_base", default="auto", show_default=True,
              help="Shortcut level per step: step (from the step size), auto, or a fixed level 0..7.")
@click.option("--order", type=Count(1, 4), help="iPNDM order (default 4).")
@click.option("--iters", type=COUNT, default=300, show_default=True, help="Upper bound on learning steps.")
@click.option("--pairs", "n_pairs", type=Count(2, validate.MAX_SAMPLES), default=100, show_default=True,
              help="Teacher pairs (half for validation; at least 2).")
@click.option("--seed", type=NONNEG, default=0, show_default=True)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="JSON model config (upstream pickles).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Reuse teacher solves across runs.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Schedule JSON to write.")
def schedule(source: str, method: str, solver: str, nfe: int | None, length: int | None, lengths_mode: str | None,
             block_budget: int | None, dt_base: str, order: int | None, iters: int, n_pairs: int, seed: int,
             config_file: str | None, cache_dir: str | None, out: str) -> None:
    """Learn (ld3, amed) or compute (heuristics) a sampling schedule for SOURCE."""
    from odelt.errors import ScheduleError
    from odelt.ode.schedule import save_schedule
    from odelt.schedules.learn import LearnConfig
    from odelt.schedules.make import Request, learn_schedule

    if (lengths_mode is None) != (block_budget is None):
        raise ScheduleError("--lengths auto and --block-budget B go together")
    if length is not None and lengths_mode:
        raise ScheduleError("--length and --lengths auto exclude each other")
    model, digest = _load(source, config_file)
    req = Request(method, solver, nfe, length, block_budget, _dt_mode(dt_base), order,
                  LearnConfig(n_pairs=n_pairs, n_train=n_pairs // 2, iters=iters, seed=seed))
    s = learn_schedule(model, req, digest, progress=True, cache_dir=cache_dir)
    save_schedule(s, out)
    p = s.provenance
    err = f", validation RMSE {p['val_rmse_init']:.4f} -> {p['val_rmse']:.4f}" if "val_rmse" in p else ""
    click.echo(f"{out}: {s.name}, grid {[round(t, 4) for t in s.t_grid]}, lengths {list(s.lengths)}, "
               f"dt_base {list(s.dt_base)}{err}")


@cli.command()
@click.argument("source")
@click.argument("more", nargs=-1)
@click.option("--schedules", "files", multiple=True, help="Schedule files or names (more may follow as arguments).")
@click.option("--held-out", "n_held", type=Count(2, validate.MAX_SAMPLES), default=256, show_default=True,
              help="Held-out noise samples (at least 2).")
@click.option("--seed", type=NONNEG, default=0, show_default=True)
@click.option("--no-fd", is_flag=True, help="Skip FD-digits.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False))
@click.option("--cache-dir", type=click.Path(file_okay=False))
@click.option("--out", "out", type=click.Path(dir_okay=False), help="Write the table as JSON.")
@click.option("--plot", "plot", type=click.Path(dir_okay=False), help="Write a Pareto plot (PNG).")
def evaluate(source: str, more: tuple[str, ...], files: tuple[str, ...], n_held: int, seed: int, no_fd: bool,
             config_file: str | None, cache_dir: str | None, out: str | None, plot: str | None) -> None:
    """RMSE to the teacher on held-out noise, FD-digits and block evaluations of each schedule."""
    from odelt.errors import ScheduleError
    from odelt.ode.heuristics import resolve_schedule
    from odelt.schedules.evaluate import evaluate as run_eval, plot_pareto, write_table

    specs = list(files) + list(more)
    if not specs:
        raise ScheduleError("expected at least one schedule (--schedules FILE...), found none")
    model, digest = _load(source, config_file)
    schedules = [resolve_schedule(spec, model.config.depth) for spec in specs]
    for s in schedules:
        s.check_fits(digest, model.config.lengths)
    rows, header = run_eval(model, schedules, n_held, seed, key=digest, with_fd=not no_fd, cache_dir=cache_dir)
    click.echo(f"held-out noise: {n_held} samples; teacher FD-digits {_fmt(header['teacher_fd_digits'])}")
    click.echo(f"{'schedule':<28} {'solver':<9} {'nfe':>4} {'blocks':>6} {'rmse':>8} {'fd':>8}")
    for r in rows:
        click.echo(f"{r.name:<28} {r.solver:<9} {r.nfe or '-':>4} {r.block_evals:>6} {r.rmse:>8.4f} {_fmt(r.fd_digits):>8}")
    if out:
        write_table(rows, header, out)
    if plot:
        plot_pareto(rows, plot)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"
