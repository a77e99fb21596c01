"""Numeric values checked once, with the same wording everywhere: the CLI's option types
(odelt.cli.options) and the library's option dataclasses both call these. Each raises a one-line
ConfigError `NAME: expected ..., found ...` and returns the value as its proper type."""

from __future__ import annotations

import math
from typing import Any, Iterable

from odelt.errors import ConfigError

MAX_STEPS = 1024          # solver steps of one schedule (the teacher takes 128)
MAX_SAMPLES = 1_000_000   # noise samples, images, pairs: a typo guard, not a resource model


def _shown(value: Any) -> str:
    """Numbers (also as typed on the command line) bare, anything else quoted."""
    try:
        float(value)
        return str(value).strip()
    except (TypeError, ValueError):
        return repr(value)


def _fail(name: str, expected: str, found: Any) -> ConfigError:
    return ConfigError(f"{name}: expected {expected}, found {_shown(found)}")


def _range(minimum: int | None, maximum: int | None) -> str:
    if maximum is None:
        return f"an integer >= {minimum}"
    return f"an integer in {minimum}..{maximum}"


def count(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer in [minimum, maximum] (no bools, no fractions)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _fail(name, _range(minimum, maximum), value)
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (ValueError, OverflowError):
        number = None
    if number is None or number < minimum or (maximum is not None and number > maximum):
        raise _fail(name, _range(minimum, maximum), value)
    return number


def threads(name: str, value: Any) -> int:
    """A thread count: 0 means the library's default."""
    return count(name, value, minimum=0, maximum=1024)


def number(name: str, value: Any, minimum: float | None = None, *, positive: bool = False) -> float:
    """A finite float; positive: > 0; minimum: >= minimum."""
    expected = "a finite number" + (" > 0" if positive else f" >= {minimum:g}" if minimum is not None else "")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise _fail(name, expected, value) from None
    if isinstance(value, bool) or not math.isfinite(x) or (positive and x <= 0) or \
            (minimum is not None and x < minimum):
        raise _fail(name, expected, value)
    return x


def positive(name: str, value: Any) -> float:
    """Tolerances, budgets, learning rates: finite and > 0."""
    return number(name, value, positive=True)


def counts(name: str, values: Iterable[Any], minimum: int = 1, maximum: int | None = None) -> tuple[int, ...]:
    out = tuple(count(name, v, minimum, maximum) for v in values)
    if not out:
        raise _fail(name, f"at least one {_range(minimum, maximum)[3:]}", "")
    return out


def batch_in(name: str, batch: int, low: int, high: int, what: str, hint: str = "") -> int:
    """A batch inside a range another artifact fixes (the bundle's export range, a profile)."""
    batch = count(name, batch)
    if not low <= batch <= high:
        raise ConfigError(f"{name}: expected a batch in {what} {low}..{high}, found {batch}{hint}")
    return batch


def bundle_batch(name: str, batch: int, rng: Any) -> int:
    """A batch inside the bundle's exported range (BatchRange: min, max)."""
    return batch_in(name, batch, rng.min, rng.max, "the bundle's range",
                    " (export with --batch MIN:OPT:MAX to change it)")


def quantile(name: str, value: Any) -> float:
    """A latency quantile a plan must fit at: in [0.5, 1) (0.5: the median model)."""
    expected = "a number in [0.5, 1)"
    try:
        q = float(value)
    except (TypeError, ValueError):
        raise _fail(name, expected, value) from None
    if isinstance(value, bool) or not 0.5 <= q < 1.0:
        raise _fail(name, expected, value)
    return q
