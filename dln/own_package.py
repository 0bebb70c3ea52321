"""A fresh Python interpreter that imports this project's own packages.

Used where `dln` starts Python again (the background .pth reader, the re-exec with huge
pages): the new interpreter runs with -P (the working folder is not put on sys.path, so
a `dln` package that folder holds is never imported) and this project's folder first on
sys.path, whether it is a source checkout or an install.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])


def interpreter_argv(code: str) -> list[str]:
    """argv of an interpreter that runs `code` with ROOT first on sys.path; arguments
    appended after it are `code`'s sys.argv[1:]."""
    return [sys.executable, "-P", "-c",
            "import sys; sys.path.insert(0, sys.argv.pop(1)); " + code, ROOT]
