"""One progress bar for every long loop (tqdm on stderr, off when not a terminal or asked)."""

from __future__ import annotations

import os
import sys


def stderr_is_terminal() -> bool:
    """True when stderr is an interactive terminal (not a pipe, file or CI log)."""
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # closed or detached stream
        return False


def progress(iterable, desc: str = "", unit: str = "it", disable: bool = False, total=None):
    """tqdm over `iterable` on stderr; a silent pass-through (same methods) when stderr is
    not a terminal, when `disable`, or when DLN_NO_PROGRESS=1."""
    from tqdm.std import tqdm

    quiet = disable or os.environ.get("DLN_NO_PROGRESS") == "1" or not stderr_is_terminal()
    return tqdm(iterable, desc=desc, unit=unit, total=total, disable=quiet,
                file=sys.stderr, dynamic_ncols=True, leave=False)
