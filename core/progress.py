"""One progress bar for every long loop (tqdm on stderr, off when not a terminal or asked)."""

from __future__ import annotations

import os
import sys


def progress(iterable, desc: str = "", unit: str = "it", disable: bool = False, total=None):
    from tqdm.auto import tqdm

    quiet = disable or os.environ.get("DLN_NO_PROGRESS") == "1"
    return tqdm(iterable, desc=desc, unit=unit, total=total, disable=quiet,
                file=sys.stderr, dynamic_ncols=True, leave=False)
