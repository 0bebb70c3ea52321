"""Writing report files (text, JSON, Markdown, PNG plots) so none is ever half-written.

Each file is written beside its destination under a temporary name and renamed
over it, the same rule `core/images.py` and `weights/files.py` follow for images
and checkpoints.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(dst: str | os.PathLike, text: str) -> Path:
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst


def save_figure_atomic(fig, dst: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG via a temporary file, then close it."""
    import matplotlib.pyplot as plt

    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, dst)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return dst
