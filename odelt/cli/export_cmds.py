"""Commands about bundles: export, inspect, verify."""

from __future__ import annotations

import json

import click

from odelt.cli import cli
from odelt.cli.options import COUNT, POSITIVE
from odelt.errors import AccuracyError, ConfigError

_LAYOUT_CHOICES = {"segments": ("segments",), "per-length": ("per-length",), "both": ("segments", "per-length")}


def parse_lengths(text: str | None) -> tuple[int, ...] | None:
    """'4,8,12' -> (4, 8, 12); the range checks against the model happen in the exporter."""
    if text is None:
        return None
    try:
        lengths = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise ConfigError(f"--lengths must be comma-separated integers like 4,8,12, found {text!r}") from None
    return lengths


def parse_layout(text: str) -> tuple[str, ...]:
    if text not in _LAYOUT_CHOICES:
        raise ConfigError(f"--layout must be one of {sorted(_LAYOUT_CHOICES)}, found {text!r}")
    return _LAYOUT_CHOICES[text]


@cli.command()
@click.argument("source")
@click.option("--out", "out", required=True, type=click.Path(), help="Bundle folder to write.")
@click.option("--layout", default="segments", show_default=True, help="segments, per-length or both.")
@click.option("--lengths", default=None,
              help="Comma-separated lengths, each in [1, depth] (default: the trained lengths and the group ends).")
@click.option("--batch", default="1:1:8", show_default=True, help="Engine batch range MIN:OPT:MAX.")
@click.option("--opset", default=17, show_default=True, type=int, help="ONNX opset (16 for TensorRT 8.5).")
@click.option("--guidance", "--cfg", "guidance", is_flag=True,
              help="Fold classifier-free guidance into the graphs (cfg_scale input; --cfg is the old name).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="JSON model config (upstream pickles).")
@click.option("--force", is_flag=True, help="Overwrite an existing bundle.")
@click.option("--vae", "vaes", multiple=True, metavar="KIND:PATH",
              help="Add a decoder stage (latent models): KIND sd (AutoencoderKL) or taesd (AutoencoderTiny), PATH a "
                   "diffusers folder or safetensors file (sd: also a Flax msgpack). Repeat for both kinds. "
                   "A latent builtin model (builtin:digits-latent) brings its own when none is given.")
def export(source: str, out: str, layout: str, lengths: str | None, batch: str, opset: int, guidance: bool,
           config_file: str | None, force: bool, vaes: tuple[str, ...]) -> None:
    """Export SOURCE (builtin:NAME, a checkpoint, or an upstream pickle) to an ONNX bundle."""
    from odelt.exporter.export import ExportOptions, export_source
    from odelt.bundle.iospec import BatchRange
    from odelt.models.config_io import read_config_file

    from odelt.models.checkpoint import vae_for_source

    vae_options: tuple[tuple[str, str], ...] = ()
    if vaes:
        from odelt.latent.vae import parse_vae_options

        vae_options = parse_vae_options(vaes)
    elif own := vae_for_source(source):       # a latent builtin's latents mean nothing without its decoder
        vae_options = (own,)
    options = ExportOptions(layouts=parse_layout(layout), lengths=parse_lengths(lengths),
                            batch=BatchRange.parse(batch), opset=opset, guidance=guidance, force=force,
                            vaes=vae_options)
    manifest = export_source(source, out, options, read_config_file(config_file) if config_file else None)
    sizes = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in manifest.weight_bytes.items())
    decoders = "".join(f", decoder {k} ({d.params / 1e6:.2f} M parameters, scale {d.scaling_factor:g} folded)"
                       for k, d in manifest.decoders.items())
    click.echo(f"wrote {out}: {len(manifest.graphs)} graphs, lengths {list(manifest.lengths)}, weights {sizes}"
               f"{decoders}")


@cli.command()
@click.argument("bundle", type=click.Path())
def inspect(bundle: str) -> None:
    """Summarise a bundle (hashes every listed file first and refuses unlisted graphs)."""
    from odelt.bundle.bundle import open_bundle
    from odelt.exporter.report import describe

    for line in describe(open_bundle(bundle, verify=True)):
        click.echo(line)


@cli.command()
@click.argument("bundle", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--source", default=None, help="Model to compare against (default: the one the bundle records).")
@click.option("--atol", default=1e-4, show_default=True, type=POSITIVE, help="Max abs error allowed (> 0).")
@click.option("--cases", default=3, show_default=True, type=COUNT, help="Random input sets per batch size.")
def verify(bundle: str, as_json: bool, source: str | None, atol: float, cases: int) -> None:
    """Compare every length of every layout in ONNX Runtime (CPU) against PyTorch."""
    from odelt.exporter.report import describe_verify
    from odelt.exporter.verify import VerifyOptions, verify_bundle

    report = verify_bundle(bundle, VerifyOptions(atol=atol, cases=cases, source=source))
    if as_json:
        click.echo(json.dumps(report))
    else:
        for line in describe_verify(report):
            click.echo(line)
    if not report["ok"]:
        raise AccuracyError(f"{bundle}: max abs error {report['max_abs_err']:.3g} exceeds {atol:g}")
