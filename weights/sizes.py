"""Model size as Table 2 can report it: bytes on disk of a checkpoint, bytes of parameters.

A .pth or .safetensors checkpoint is one file; an Orbax checkpoint is a folder, whose size
is the sum of its regular files (links are not followed, so nothing outside is counted).
Parameter bytes are the float32 storage of the weights alone (4 bytes per parameter),
the size any format needs at least.
"""

from __future__ import annotations

import os
from pathlib import Path

FLOAT32_BYTES = 4


def bytes_on_disk(path: str | os.PathLike) -> int:
    """Size of a checkpoint file, or the total of the regular files in a checkpoint folder."""
    path = Path(path)
    if not path.is_dir():
        return path.stat().st_size
    total = 0
    for root, folders, files in os.walk(path):  # os.walk follows no links into folders
        for name in files:
            entry = Path(root) / name
            if not entry.is_symlink() and entry.is_file():
                total += entry.stat().st_size
    return total


def parameter_bytes(parameter_count: int) -> int:
    """Bytes the parameters take as float32."""
    return FLOAT32_BYTES * int(parameter_count)
