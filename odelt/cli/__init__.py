"""The `odelt-export` command line. It only parses options and composes library stages; every
OdeltError, bad option and failed write becomes one line on stderr and exit code 1 (anything else
is a bug: a traceback)."""

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
    from odelt.cli import serving_cmds  # noqa: F401
    from odelt.cli import stage_cmds  # noqa: F401


def _fail(message: str) -> None:
    click.echo(f"odelt-export: error: {' '.join(message.split())}", err=True)
    sys.exit(1)


def _usage(e: click.UsageError) -> str:
    hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
    return e.format_message() + hint


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        cli.main(args=argv, prog_name="odelt-export", standalone_mode=False)
    except OdeltError as e:
        _fail(str(e))
    except click.exceptions.Abort:
        _fail("aborted")
    except click.UsageError as e:
        _fail(_usage(e))
    except click.ClickException as e:
        _fail(e.format_message())
    except OSError as e:   # last resort: a write or read outside odelt.fileio
        # a copy (shutil) that fails on a full disk names its source first and its target second:
        # the target is the file that could not be written
        target = e.filename2 or e.filename
        where = f"{target}: " if target else ""
        _fail(f"{where}{e.strerror or e}")


if __name__ == "__main__":
    main()
