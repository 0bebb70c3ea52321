"""The argparse types of every numeric option of `dln`: each value range-checked.

A value out of range is argparse's own one-line error (`dln CMD: error: argument
--seed: must be at least 0, got -1`, exit 2), before any work starts: no option can
reach the code as a negative count, a seed a random generator refuses, or a number
so large that a loop over it would never end. Whole numbers may be written with
`_` or `,` between digits or in exponent form when the value is whole (`1e6`);
each type's limits are in its name or its help text.
"""

from __future__ import annotations

import argparse
import decimal
import math
from typing import Callable

from core.text import escape_text

MAX_INT = 2**31 - 1      # the largest count any option takes (steps, pixels, repeats)
SEED_LIMIT = 2**32       # seeds are 32-bit: JAX's PRNGKey and numpy's legacy seeding take no more
_MAX_DIGITS = 30         # longer numbers are refused before they are converted


def _shown(text: str) -> str:
    """The value as typed, escaped to one line and cut short (it may be any length)."""
    shown = escape_text(text)
    return repr(shown if len(shown) <= 40 else shown[:37] + "...")


def _whole_number(text: str) -> int:
    cleaned = str(text).strip().replace("_", "").replace(",", "")
    try:
        value = decimal.Decimal(cleaned)
    except decimal.InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a whole number: {_shown(text)}") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a whole number: {_shown(text)}")
    if value.adjusted() > _MAX_DIGITS:  # 1e999999999: refuse before building the integer
        sign = "-" if value < 0 else ""
        raise argparse.ArgumentTypeError(f"{_shown(text)} is far out of range (about {sign}10^"
                                         f"{value.adjusted()})")
    if value != value.to_integral_value():
        raise argparse.ArgumentTypeError(f"not a whole number: {_shown(text)}")
    return int(value)


def int_range(low: int, high: int = MAX_INT) -> Callable[[str], int]:
    """A type for whole numbers low <= n <= high."""

    def parse(text: str) -> int:
        value = _whole_number(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:,}, got {_shown(text)}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:,}, got {_shown(text)}")
        return value

    parse.__name__ = f"whole number in [{low}, {high}]"
    return parse


positive_int = int_range(1)
positive_int.__name__ = "positive_int"
nonnegative_int = int_range(0)
nonnegative_int.__name__ = "nonnegative_int"


def seed(text: str) -> int:
    """A random seed: 0 <= s < 2**32."""
    value = _whole_number(text)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"a seed is a whole number from 0 to {SEED_LIMIT - 1:,}"
                                         f", got {_shown(text)}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(str(text).strip().replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {_shown(text)}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {_shown(text)}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {_shown(text)}")
    return value


def finite_float(text: str) -> float:
    """Any finite number."""
    return _finite_float(text)


def decay(text: str) -> float:
    """A decay rate: 0 <= d < 1 (0: off)."""
    value = _finite_float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be 0 (off) or a decay below 1, e.g. 0.995; "
                                         f"got {_shown(text)}")
    return value


def add_cpu_split_option(parser: argparse.ArgumentParser, what: str) -> None:
    """`--cpu-split auto|off` (JAX on a CPU: one XLA device per core, port.host_devices);
    its default follows DLN_CPU_SPLIT (off: off). `what`: what auto does, for the help."""
    from port.host_devices import split_wanted

    parser.add_argument("--cpu-split", choices=("auto", "off"),
                        default="auto" if split_wanted() else "off",
                        help=f"JAX on a CPU: auto (default; DLN_CPU_SPLIT=off changes the "
                             f"default) {what}")
