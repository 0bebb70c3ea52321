"""The state files of a long run (a training log, stored settings): read without
trusting them, and one process at a time per run folder.

A run's folder may hold anything by the time it is read again: a file cut short by a
full disk or a kill, a FIFO or a link to /dev/zero where a log should be, another
process's run. `read_small_file` opens only a regular file (checked on the open
descriptor, opened non-blocking, so a FIFO cannot hang the run) of bounded size;
callers then parse it and treat any failure as damage. `folder_lock` holds an
exclusive flock on a lock file in the folder for the length of a run, so a second
run on the same folder is refused at once instead of both writing the same files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import Iterator

from core.errors import UserError
from core.text import escape_text

LOCK_FILE = ".dln.lock"


class StateFileError(ValueError):
    """A state file that is not a readable regular file within its size limit."""


class FolderBusy(UserError):
    """Another process holds the folder's lock."""


def read_small_file(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; StateFileError otherwise
    (FileNotFoundError when it does not exist)."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateFileError(f"{escape_text(path)} is not a regular file")
        if info.st_size > limit:
            raise StateFileError(f"{escape_text(path)} holds {info.st_size:,} bytes, more than "
                                 f"the {limit:,} it may")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise StateFileError(f"{escape_text(path)} grew past {limit:,} bytes while read")
        return b"".join(chunks)
    finally:
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "another run") -> Iterator[Path]:
    """Hold an exclusive lock on FOLDER/.dln.lock while the block runs; FolderBusy (one
    line) at once if another process holds it. The lock ends with the process, however
    it ends, so a killed run never leaves its folder locked."""
    import fcntl

    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as err:
        raise FolderBusy(f"{escape_text(folder)}: cannot open its lock file "
                         f"({err.strerror or err})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderBusy(f"{escape_text(folder)} is in use by {what} (it holds "
                                 f"{LOCK_FILE}); wait for it to end, or choose another "
                                 "folder") from None
            raise FolderBusy(f"{escape_text(folder)}: cannot lock it "
                             f"({err.strerror or err})") from None
        yield path
    finally:
        os.close(fd)  # releases the lock
