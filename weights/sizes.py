"""Model size as Table 2 can report it: bytes on disk of a checkpoint, bytes of parameters.

A .pth or .safetensors checkpoint is one file; an Orbax checkpoint is a folder, whose size
is the sum of its regular files (links are not followed, so nothing outside is counted).
Parameter bytes are the float32 storage of the weights alone (4 bytes per parameter),
the size any format needs at least. `checkpoint_sizes` gives all of them for one
checkpoint, each format written as `dln convert` writes it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

FLOAT32_BYTES = 4
# the formats Table 2 sizes, each by the name `dln convert` reads as that format
SIZED_FORMATS = {"pth": "weights.pth", "safetensors": "weights.safetensors",
                 "orbax": "weights.orbax"}


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


def checkpoint_sizes(ckpt) -> dict[str, int]:
    """Bytes on disk of a loaded checkpoint (weights.convert.Checkpoint) as a .pth (torch
    names, no `module.` prefix), a .safetensors file and an Orbax checkpoint folder, each
    written (and verified) by weights.convert.save_checkpoint with `dln convert`'s
    defaults into a private temporary folder that is removed afterwards; the bytes of
    its parameters; and the bytes of the file or folder it was read from (`file_bytes`,
    None when it came from memory)."""
    from weights.convert import save_checkpoint

    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="dln-sizes-") as folder:
        for fmt, name in SIZED_FORMATS.items():
            dst = Path(folder) / name
            save_checkpoint(ckpt, dst)
            sizes[f"{fmt}_bytes"] = bytes_on_disk(dst)
    sizes["parameter_bytes"] = parameter_bytes(ckpt.parameter_count)
    source = Path(ckpt.source)
    sizes["file_bytes"] = bytes_on_disk(source) if source.exists() else None
    return sizes
