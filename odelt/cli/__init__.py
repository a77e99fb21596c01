"""The `odelt-export` command line. It only parses options and composes library stages; every
OdeltError becomes one line on stderr and exit code 1 (anything else is a bug: a traceback)."""

from __future__ import annotations

import sys

import click

from odelt.errors import OdeltError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="odelt-export")
def cli() -> None:
    """Compile ODE_t(ODE_l) flow transformers for the edge."""


def _register() -> None:
    # One module per area keeps this file small; each adds its commands to `cli`.
    from odelt.cli import models_cmds  # noqa: F401
    from odelt.cli import train_cmds  # noqa: F401
    from odelt.cli import quantize_cmds  # noqa: F401
    from odelt.cli import engines_cmds  # noqa: F401
    from odelt.cli import export_cmds  # noqa: F401
    from odelt.cli import runtime_cmds  # noqa: F401
    from odelt.cli import schedule_cmds  # noqa: F401
    from odelt.cli import plan_cmds  # noqa: F401
    from odelt.cli import demo_cmds  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        cli.main(args=argv, standalone_mode=False)
    except OdeltError as e:
        click.echo(f"odelt-export: error: {e}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("odelt-export: aborted", err=True)
        sys.exit(1)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
