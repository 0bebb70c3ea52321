"""The one way this project writes a file or a folder so that it is never half-written.

`atomic_path(dst)` yields a temporary path in dst's own folder (so the final rename
stays on one file system); when the block succeeds the temporary file is fsynced,
given the usual mode of a new file (0666 less the umask: mkstemp's 0600 would
otherwise survive the rename) and renamed onto dst. With `overwrite=False` the
last step is a hard link, which fails rather than replace a file that appeared in
the meantime. On any exception, KeyboardInterrupt and the exception `dln` raises
for SIGTERM / SIGHUP included, the temporary file is removed and dst is untouched.

`atomic_paths(dsts)` publishes several files as a unit: all or none (a file that
was replaced gets its previous content back if a later one cannot be published).

`atomic_directory(dst)` does the same for a folder that must appear complete or
not at all (a training checkpoint: weights and optimizer state together), and
`atomic_new_directory(dst)` for a folder whose writer must create it (an Orbax
checkpoint).

OS failures are raised as OSError (FileExistsError for a refused clobber); each
caller words them as its own one-line error.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def current_umask() -> int:
    """The process umask, read without changing it (Linux), else by setting it back."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def usual_file_mode() -> int:
    """The mode open() gives a new file: 0666 less the umask."""
    return 0o666 & ~current_umask()


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # some file systems cannot open a folder; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish_file(tmp: Path, dst: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, dst)
        return
    try:
        os.link(tmp, dst)  # atomic, and fails if dst exists
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: check, then rename
        if dst.exists() or dst.is_symlink():
            raise FileExistsError(errno.EEXIST, "exists", str(dst)) from None
        os.replace(tmp, dst)


def refuse_existing(dst: str | os.PathLike) -> None:
    """FileExistsError if dst (or a link by that name) is already there."""
    dst = Path(dst)
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(errno.EEXIST, "exists", str(dst))


# Linux and macOS allow 255 bytes a name; mkstemp adds 8 characters and a suffix
MAX_TEMPORARY_PREFIX_BYTES = 200


def temporary_prefix(name: str) -> str:
    """'.NAME.' for a temporary name beside NAME, NAME cut to fit: a destination name of
    250 bytes (allowed) would otherwise give a temporary name the system refuses, and
    the file could not be written at all."""
    raw = os.fsencode(name)[:MAX_TEMPORARY_PREFIX_BYTES - 2]
    return f".{os.fsdecode(raw)}."


def _temporary_beside(dst: Path, suffix: str = ".tmp") -> Path:
    """A new empty file in dst's folder, with the usual mode of a new file."""
    folder = dst.parent if str(dst.parent) else Path(".")
    fd, name = tempfile.mkstemp(prefix=temporary_prefix(dst.name), suffix=suffix, dir=folder)
    try:
        os.fchmod(fd, usual_file_mode())
    finally:
        os.close(fd)
    return Path(name)


def _keep_previous(dst: Path) -> Path | None:
    """A second name for the file at dst (a hard link, so dst stays in place), that
    puts it back if a later file of the same unit cannot be published; None when dst
    does not exist, or is a folder (which no file replaces: its publish fails)."""
    if not (dst.exists() or dst.is_symlink()) or (dst.is_dir() and not dst.is_symlink()):
        return None
    backup = _temporary_beside(dst, ".old")
    backup.unlink()
    try:
        os.link(dst, backup, follow_symlinks=False)
    except OSError:  # no hard links here: move it aside (dst is briefly absent)
        os.rename(dst, backup)
    return backup


def _remove_quietly(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            if path.exists() or path.is_symlink():
                path.unlink()


@contextlib.contextmanager
def atomic_paths(dsts: list[str | os.PathLike], overwrite: bool = True, fsync: bool = True
                 ) -> Iterator[list[Path]]:
    """Yield a temporary path beside each of dsts; publish them all as dsts only if the
    block succeeds, as a unit: all are written and fsynced before the first is
    published, and if publishing a later one fails (a full disk, a file that appeared
    meanwhile), the ones already published are rolled back (a replaced file gets its
    previous content back, a new one is removed). Used for files that must match
    (a synthetic pair: the low-light image and its reference)."""
    dsts = [Path(d) for d in dsts]
    if not overwrite:
        for dst in dsts:
            refuse_existing(dst)
    temps: list[Path] = []
    backups: list[Path | None] = []
    published: list[tuple[Path, Path | None]] = []  # (dst, its previous file) per publish
    try:
        for dst in dsts:
            temps.append(_temporary_beside(dst))
        yield list(temps)
        if fsync:
            for tmp in temps:
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
        for tmp, dst in zip(temps, dsts):
            previous = _keep_previous(dst) if overwrite and len(dsts) > 1 else None
            backups.append(previous)
            try:
                _publish_file(tmp, dst, overwrite)
            except BaseException:
                if previous is not None and not (dst.exists() or dst.is_symlink()):
                    os.replace(previous, dst)  # moved aside above: put it back
                raise
            published.append((dst, previous))
        if fsync:
            for folder in dict.fromkeys(d.parent if str(d.parent) else Path(".") for d in dsts):
                _fsync_folder(folder)
    except BaseException:
        for dst, previous in reversed(published):  # roll back: the unit is all or nothing
            with contextlib.suppress(OSError):
                if previous is not None:
                    os.replace(previous, dst)
                else:
                    dst.unlink()
        raise
    finally:
        for path in temps + backups:
            _remove_quietly(path)


@contextlib.contextmanager
def atomic_path(dst: str | os.PathLike, overwrite: bool = True, fsync: bool = True
                ) -> Iterator[Path]:
    """Yield a temporary file path beside dst; publish it as dst only if the block succeeds."""
    with atomic_paths([dst], overwrite=overwrite, fsync=fsync) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_directory(dst: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside dst; rename it to dst (which must not exist) only
    if the block succeeds, after fsyncing every file in it. Removed on any failure."""
    dst = Path(dst)
    refuse_existing(dst)
    folder = dst.parent if str(dst.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(dst.name), suffix=".tmp",
                                   dir=folder))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        yield tmp
        for path in tmp.iterdir():
            if path.is_file():
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_folder(tmp)
        os.rename(tmp, dst)  # one rename publishes the whole folder
        _fsync_folder(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file and folder under `folder` (itself included)."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(Path(root) / name, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_folder(Path(root))


@contextlib.contextmanager
def atomic_new_directory(dst: str | os.PathLike, replaceable: Callable[[Path], bool] | None = None
                         ) -> Iterator[Path]:
    """Yield a path that does not exist yet, in a private folder beside dst, for a writer
    that must create its folder itself (Orbax refuses an existing one); when the block
    succeeds, everything under it is fsynced and it is renamed onto dst. dst must not
    exist, unless replaceable(dst) says it may be replaced: then it is moved into the
    private folder first and removed with it, so that dst is without a whole folder only
    between two renames, and never is anything else replaced. Removed on any failure."""
    dst = Path(dst)
    if (dst.exists() or dst.is_symlink()) and not (replaceable and replaceable(dst)):
        raise FileExistsError(errno.EEXIST, "exists", str(dst))
    folder = dst.parent if str(dst.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(dst.name), suffix=".tmp",
                                   dir=folder))
    try:
        written = tmp / "new"
        yield written
        os.chmod(written, 0o777 & ~current_umask())
        fsync_tree(written)
        if dst.exists() or dst.is_symlink():
            if not (replaceable and replaceable(dst)):
                raise FileExistsError(errno.EEXIST, "exists", str(dst))
            os.rename(dst, tmp / "replaced")
        os.rename(written, dst)
        _fsync_folder(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def link_or_copy_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Make dst a hard link to (or, where links are impossible, a copy of) src, atomically."""
    dst = Path(dst)
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    return dst


def write_bytes_atomic(dst: str | os.PathLike, data: bytes, overwrite: bool = True) -> Path:
    with atomic_path(dst, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(dst)


def write_text_atomic(dst: str | os.PathLike, text: str) -> Path:
    with atomic_path(dst) as tmp:
        tmp.write_text(text)
    return Path(dst)


def save_figure_atomic(fig, dst: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG via a temporary file, then close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(dst) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return Path(dst)
