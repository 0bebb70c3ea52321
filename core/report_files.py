"""Writing a report: its files (JSON, Markdown, CSV, PNG) into one folder, each atomically.

Every report of the toolkit (parity, gradient and training parity, bench, Table 1 and
Table 2, the training log) is written by `write_report`, so all of them create their
folder the same way, never leave a half-written file (core.atomic_files) and return
the same thing: the paths written, in the order the caller listed them.

A file's content is either text (written as is) or a function that draws it: called
with the destination path, it writes the file itself, e.g. a matplotlib plot saved
with core.atomic_files.save_figure_atomic. A folder that cannot be created or written
(no permission, a file in the way, a full disk) is a ReportError: one line for the
user, so no command wraps it again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Union

from core.atomic_files import write_text_atomic
from core.errors import UserError

Content = Union[str, Callable[[Path], object]]


class ReportError(UserError):
    """A report folder or file that cannot be written."""


def json_text(value, indent: int = 2) -> str:
    """JSON as the reports write it: indented, one trailing newline."""
    return json.dumps(value, indent=indent) + "\n"


def write_report(folder: str | os.PathLike, files: dict[str, Content]) -> list[Path]:
    """Write {file name: text or drawing function} into folder (created); the paths."""
    folder = Path(folder)
    written = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            path = folder / name
            if isinstance(content, str):
                write_text_atomic(path, content)
            else:
                content(path)
            written.append(path)
    except OSError as err:
        raise ReportError(f"{folder}: cannot write the report "
                          f"({err.strerror or err})") from None
    return written
