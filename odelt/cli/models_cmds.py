"""Commands about models: info (and, later, train)."""

from __future__ import annotations

import click

from odelt.cli import cli


@cli.command()
@click.argument("source")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="JSON model config (upstream pickles).")
def info(source: str, config_file: str | None) -> None:
    """Load a model (builtin:NAME, a checkpoint, or an upstream pickle) and describe it."""
    from odelt.models import load_checkpoint
    from odelt.models.config_io import read_config_file

    model = load_checkpoint(source, read_config_file(config_file) if config_file else None)
    cfg = model.config
    click.echo(f"{source}: hidden {cfg.hidden_size}, depth {cfg.depth}, heads {cfg.num_heads}, "
               f"group {cfg.depth_group}, lengths {list(cfg.lengths)}, classes {cfg.num_classes}, "
               f"input {cfg.in_channels}x{cfg.input_size}x{cfg.input_size}")
    for length in cfg.export_lengths:    # what `export` writes by default: trained lengths + group ends
        click.echo(f"  l={length:>3}: live blocks {cfg.live_depth(length):>3}, "
                   f"{model.param_bytes(length) / 1e6:.2f} MB of parameters"
                   f"{'' if length in cfg.lengths else ' (a group end, not trained)'}")
