"""Commands of latency-budgeted generation: profile and plan."""

from __future__ import annotations

import click

from odelt.cli import cli
from odelt.runtime.backends import BACKENDS
from odelt.runtime.budget.profile import DECODER_REPEATS
from odelt.cli.options import COUNT, POSITIVE, QUANTILE, Counts


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--backend", type=click.Choice(sorted(BACKENDS)), default="ort", show_default=True)
@click.option("--batch", "batch", type=Counts(), default="1,8", show_default=True,
              help="Batch sizes to time, e.g. 1,8 (within the bundle's exported batch range).")
@click.option("--precision", "precisions", multiple=True,
              help="Precisions to time (default: every precision the bundle has).")
@click.option("--repeats", type=COUNT, default=20, show_default=True, help="Timed repeats per measurement.")
@click.option("--decoder-repeats", type=COUNT, default=DECODER_REPEATS, show_default=True,
              help="Latent bundles: timed decodes per (precision, batch, decoder); a CPU takes seconds per SD-VAE decode.")
def profile(bundle: str, backend: str, batch: tuple[int, ...], precisions: tuple[str, ...], repeats: int,
            decoder_repeats: int) -> None:
    """Time every graph and every length's chain of BUNDLE on this device (and its decoders)."""
    from odelt.bundle.bundle import open_bundle
    from odelt.runtime.backends.openvino import openvino_precisions, runs_label
    from odelt.runtime.budget.profile import profile_bundle, save_profile

    manifest = open_bundle(bundle)
    precs = precisions or (openvino_precisions(manifest) if backend == "openvino" else manifest.precisions)
    shown = click.get_text_stream("stderr").isatty()     # progress on a terminal only, like the bars
    prof = profile_bundle(manifest, backend, batch, precs, repeats,
                          progress=(lambda what: click.echo(f"profiling {what} ...", err=True)) if shown else None,
                          decoder_repeats=decoder_repeats)
    path = save_profile(manifest, prof)
    for prec, by_batch in prof["calls"].items():
        label = runs_label(manifest, prec) if backend == "openvino" else prec
        for b, by_len in by_batch.items():
            cells = ", ".join(f"l={n}: {v['median_ms']:.3f}" for n, v in by_len.items())
            click.echo(f"{label} batch {b}: one call (ms, median) {cells}")
    for prec, by_batch in prof.get("decoders", {}).items():
        for b, by_kind in by_batch.items():
            cells = ", ".join(f"{k}: {v['median_ms']:.3f}" for k, v in by_kind.items())
            click.echo(f"{prec} batch {b}: decoding the batch (ms, median) {cells}")
    click.echo(f"wrote {path}")


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--budget-ms", type=POSITIVE, required=True, help="Latency budget for one batch, milliseconds.")
@click.option("--batch", type=COUNT, default=1, show_default=True,
              help="Images per batch: within the bundle's exported range and the profiled batches.")
@click.option("--extrapolate", is_flag=True, help="Allow a batch outside the profiled batches (linear extrapolation).")
@click.option("--device", default=None, help="Profile id to use (default: this device's).")
@click.option("--backend", "backends", multiple=True, type=click.Choice(sorted(BACKENDS)),
              help="Backends to plan across (default: every backend with a profile on this device).")
@click.option("--quantile", type=QUANTILE, default=0.95, show_default=True,
              help="A plan fits when its predicted latency at this quantile is within the budget.")
@click.option("--latents", is_flag=True, help="Latent bundles: plan for latents only (no decoder cost).")
@click.option("--decoder", "decoders", multiple=True, metavar="KIND",
              help="Latent bundles: the decoder(s) to choose from (default: every one the bundle has).")
@click.option("--pareto", type=click.Path(dir_okay=False), default=None, help="Write a quality/latency plot.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the chosen plan and its prediction as one JSON object (the keys of `generate --log`).")
def plan(bundle: str, budget_ms: float, batch: int, extrapolate: bool, device: str | None,
         backends: tuple[str, ...], quantile: float, latents: bool, decoders: tuple[str, ...], pareto: str | None,
         as_json: bool) -> None:
    """Choose the best-quality plan whose predicted latency fits --budget-ms (end to end: a latent
    bundle's plans include decoding the batch)."""
    from odelt.errors import ConfigError
    from odelt.bundle.bundle import open_bundle
    from odelt.pipeline.report import chosen_line, plan_table, plot_pareto
    from odelt.runtime.budget.planner import choose, prediction_record
    from odelt.runtime.budget.plans import load_candidates
    from odelt.runtime.budget.predict import Predictor
    from odelt.runtime.budget.profile import check_plan_batch, load_profile
    from odelt.runtime.budget.axes import ByBackend, across_backends, load_profiles

    if latents and decoders:
        raise ConfigError(f"--latents plans without a decoder: expected --latents or --decoder, found both "
                          f"(--decoder {' '.join(decoders)})")
    if pareto:
        from odelt.fileio import check_out, check_writable

        check_out(pareto, "file", (bundle,), folder=False)
        check_writable(pareto)
    manifest = open_bundle(bundle)
    if latents and not manifest.decoders:
        raise ConfigError(f"--latents: expected a latent bundle (with a decoder stage), found the pixel-space "
                          f"bundle {manifest.root}")
    if device is not None:
        prof = load_profile(manifest, device, backends[0] if len(backends) == 1 else "ort")
        profiles = {str(prof.get("backend", "ort")): prof}
    else:
        profiles = load_profiles(manifest, backends or None)
    for prof in profiles.values():
        check_plan_batch(manifest, prof, batch, extrapolate)
    candidates = across_backends(load_candidates(manifest, decode=False if latents else None,
                                                 decoders=decoders or None), profiles, manifest)
    predictor = ByBackend({b: Predictor(p, batch, quantile) for b, p in profiles.items()})
    choice = choose(candidates, budget_ms, predictor)
    if as_json:
        import json

        click.echo(json.dumps({**prediction_record(choice.candidate, choice.predicted_ms, predictor.of(choice.candidate)),
                               "budget_ms": budget_ms}))
    else:
        click.echo(plan_table(choice))
        click.echo(chosen_line(choice, budget_ms, quantile, batch))
    if pareto:
        plot_pareto([(choice, budget_ms)], pareto)
        click.echo(f"wrote {pareto}", err=as_json)
