"""Commands of the runtime: generate."""

from __future__ import annotations

import click

from odelt.cli import cli
from odelt.bundle.iospec import LAYOUTS
from odelt.runtime.backends import BACKENDS
from odelt.runtime.budget.stream import CONTROLS
from odelt.cli.options import COUNT, FINITE, NONNEG, POSITIVE, QUANTILE, SAMPLES, THREADS, only_with


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--schedule", "schedule", default=None, metavar="NAME|FILE",
              help="KIND[:SOLVER[:STEPS]] (uniform, shifted, cosine; default uniform:euler:8) or a schedule .json.")
@click.option("-n", "n", type=SAMPLES, default=16, show_default=True, help="Images to generate.")
@click.option("--batch", type=COUNT, default=8, show_default=True,
              help="Images per backend call, within the bundle's exported batch range.")
@click.option("--seed", type=NONNEG, default=0, show_default=True,
              help="Noise = numpy default_rng(seed).standard_normal((n,C,H,W)); labels i %% classes, or the null class of an unconditional model (odelt.ode.seeds).")
@click.option("--guidance-scale", "--cfg-scale", "guidance_scale", type=FINITE, default=None,
              help="Classifier-free guidance scale (--cfg-scale is the old name).")
@click.option("--backend", type=click.Choice(sorted(BACKENDS)), default=None,
              help="Runtime backend (default ort). With --budget-ms: plan on this backend only (default: "
                   "every backend with a profile on this device).")
@click.option("--layout", type=click.Choice(LAYOUTS), default=None,
              help="Graph layout to run (default: segments when the bundle has it).")
@click.option("--length", type=COUNT, default=None, help="Length for heuristic schedules (default: the longest).")
@click.option("--threads", type=THREADS, default=0, help="ONNX Runtime intra-op threads (0: its default).")
@click.option("--no-tables", is_flag=True, help="Ignore the bundle's modulation tables.")
@click.option("--precision", default="fp32", show_default=True, help="Precision variant to run (fp32, fp16, int8).")
@click.option("--budget-ms", type=POSITIVE, default=None,
              help="Latency budget per batch: run the plan `odelt-export plan` chooses (needs a profile and "
                   "a quality table). The plan fixes the schedule and precision, so it excludes --schedule.")
@click.option("--extrapolate", is_flag=True,
              help="With --budget-ms: allow a batch outside the profiled batches (the prediction extrapolates).")
@click.option("--quantile", type=QUANTILE, default=0.95, show_default=True,
              help="With --budget-ms: a plan fits when its predicted latency at this quantile is within budget.")
@click.option("--control", type=click.Choice(CONTROLS), default=CONTROLS[-1], show_default=True,
              help="With --budget-ms: open = one plan; closed = re-plan between batches as the device's speed "
                   "moves; anytime = closed + shorter lengths inside a batch that runs late.")
@click.option("--no-early-finish", is_flag=True,
              help="With --control anytime: never merge steps or finish a late batch early (only shorten lengths).")
@click.option("--log", "log", type=click.Path(dir_okay=False), default=None,
              help="With --budget-ms: write every batch's latency, plan and switches as JSON lines.")
@click.option("--latents", is_flag=True,
              help="Latent bundles: keep the latents, skip the decoder stage (the grid shows latent channels).")
@click.option("--decoder", "decoder", default=None, metavar="KIND",
              help="Latent bundles with several decoders: sd or taesd (default: the bundle's, sd when both).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Grid PNG to write.")
@click.option("--save-array", is_flag=True,
              help="Also write the samples (decoded images, not clamped; latents with --latents) as OUT with .npy suffix.")
def generate(bundle: str, schedule: str | None, n: int, batch: int, seed: int, guidance_scale: float | None,
             backend: str | None, layout: str | None, length: int | None, threads: int, no_tables: bool,
             precision: str, budget_ms: float | None, extrapolate: bool, quantile: float, control: str,
             no_early_finish: bool, latents: bool, decoder: str | None, log: str | None, out: str, save_array: bool) -> None:
    """Sample images from an exported BUNDLE with the numpy runtime."""
    import json
    from pathlib import Path

    from tqdm import tqdm

    from odelt.runtime.images import grid_image, save_npy, save_png
    from odelt.fileio import check_out, check_writable
    from odelt.runtime.generate import GenerateOptions, generate_from_bundle

    only_with("--budget-ms", budget_ms is not None, {"log": "--log", "quantile": "--quantile",
                                                     "extrapolate": "--extrapolate", "control": "--control",
                                                     "no_early_finish": "--no-early-finish"})
    outputs = [out, *([Path(out).with_suffix(".npy")] if save_array else []), *([log] if log else [])]
    for path in outputs:                        # every output checked before the work, not after
        check_out(path, "file", (bundle,), folder=False)
        check_writable(path)
    opts = GenerateOptions(schedule=schedule, n=n, batch=batch, seed=seed, guidance_scale=guidance_scale,
                           backend=backend or "ort", plan_backends=(backend,) if backend else None,
                           layout=layout, length=length, threads=threads, tables=not no_tables,
                           precision=precision, budget_ms=budget_ms, extrapolate=extrapolate, quantile=quantile,
                           control=control, decode=not latents, decoder=decoder, early_finish=not no_early_finish)
    with tqdm(total=n, desc="generate", unit="img", disable=None, leave=False) as bar:
        res = generate_from_bundle(bundle, opts, progress=bar.update)
    upscale = max(1, 64 // res.images.shape[-1])
    save_png(grid_image(res.images, upscale=upscale), out)      # to_uint8 clamps to [-1, 1]
    if save_array:
        save_npy(res.images, Path(out).with_suffix(".npy"))
    s, st = res.schedule, res.stats
    click.echo(f"{n} images, schedule {s.name or '(file)'}: {s.solver}, {s.steps} steps, "
               f"{st.calls / max(1, -(-n // batch)):.0f} network calls per batch, lengths {sorted(set(s.lengths))}")
    click.echo(f"latency: {1e3 * st.wall_s / n:.2f} ms/image, {1e3 * st.backend_s / max(1, st.calls):.3f} ms per "
               f"network call (batch {batch}), overhead outside the backend {100 * (1 - st.backend_s / st.wall_s):.1f}%")
    if res.decoded is not None:
        d = res.decoded
        click.echo(f"decoded with {d.kind} ({d.precision}): {1e3 * d.seconds / n:.2f} ms/image, images "
                   f"{'x'.join(map(str, res.images.shape[1:]))} from latents {'x'.join(map(str, res.latents.shape[1:]))}")
    if res.plan is not None and res.stream is not None:
        decode_s = res.decoded.seconds if res.decoded is not None else 0.0
        per_batch = 1e3 * (st.wall_s + decode_s) / max(1, -(-n // batch))
        share = res.plan.decode_share()
        decoding = f" (decoder {share[0]:.2f} ms, {share[1]:.1%} of the end-to-end median)" if share else ""
        click.echo(f"first plan {res.plan.candidate.name} for budget {budget_ms:g} ms: predicted "
                   f"{res.plan.predicted_ms:.2f} ms at quantile {quantile:g} per batch of {batch}{decoding}; "
                   f"measured {per_batch:.2f} ms per batch (mean{', decoding included' if share else ''}); "
                   f"backend {res.plan.candidate.backend}")
        click.echo(res.stream.summary())
        if log:
            from odelt.fileio import write_text_atomic

            write_text_atomic(log, "".join(json.dumps(line) + "\n" for line in res.log or []))
            click.echo(f"wrote {log}")
    click.echo(f"peak memory (RSS): {res.peak_rss_mb:.1f} MB; wrote {out}" + (" and .npy" if save_array else ""))
