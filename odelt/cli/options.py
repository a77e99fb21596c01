"""Option types for every command: each parses and checks its value through odelt.validate, so a
bad number fails before any work, in one line and the same words everywhere."""

from __future__ import annotations

from typing import Any

import click

from odelt import validate


def _name(param: click.Parameter | None) -> str:
    if param is None:
        return "value"
    opts = getattr(param, "opts", None)
    return max(opts, key=len) if opts and param.param_type_name == "option" else param.human_readable_name


class Count(click.ParamType):
    """An integer in [minimum, maximum]."""

    name = "integer"

    def __init__(self, minimum: int = 1, maximum: int | None = None):
        self.minimum, self.maximum = minimum, maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        return validate.count(_name(param), value, self.minimum, self.maximum)


class Threads(Count):
    name = "threads"

    def __init__(self) -> None:
        super().__init__(0, 1024)


class Positive(click.ParamType):
    """A finite number > 0 (tolerances, budgets, learning rates)."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        return validate.positive(_name(param), value)


class Finite(click.ParamType):
    name = "number"

    def __init__(self, minimum: float | None = None):
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        return validate.number(_name(param), value, self.minimum)


class Quantile(click.ParamType):
    """A latency quantile in [0.5, 1) (0.5: the median model)."""

    name = "quantile"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        return validate.quantile(_name(param), value)


class Counts(click.ParamType):
    """Comma-separated integers, e.g. batch sizes 1,8."""

    name = "list"

    def __init__(self, minimum: int = 1, maximum: int | None = None):
        self.minimum, self.maximum = minimum, maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        parts = [p.strip() for p in str(value).split(",") if p.strip()]
        return validate.counts(_name(param), parts, self.minimum, self.maximum)


COUNT = Count()                 # >= 1: repeats, samples, images, batches
NONNEG = Count(0)               # >= 0: warm-up steps, snapshot intervals
THREADS = Threads()             # >= 0: 0 = the library's default
POSITIVE = Positive()           # finite and > 0
FINITE = Finite()
SAMPLES = Count(1, validate.MAX_SAMPLES)
QUANTILE = Quantile()


def only_with(flag: str, given: bool, names: dict[str, str]) -> None:
    """Options that apply only together with `flag`: typing one without it is an error, not a no-op
    (`names`: parameter name -> its option as typed)."""
    from click.core import ParameterSource

    if given:
        return
    ctx = click.get_current_context()
    typed = [opt for name, opt in names.items() if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE]
    if typed:
        raise click.UsageError(f"{typed[0]} applies only with {flag}: expected {flag} too, found {typed[0]} alone")
