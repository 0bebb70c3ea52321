"""Planning the outputs of a run so that no run destroys one of its own inputs.

Every command that reads files and writes files (enhance, synth, convert, demo, the
Table 2 and Table 1 reports) makes one `OutputPlan` from all of its inputs before it
writes anything, and claims every output path through it. A claim is refused when
the output is one of the run's inputs, or when another output of the same run has
already claimed it; `--overwrite` therefore replaces only files that earlier runs
wrote, never an input of this run, and two outputs of one run never overwrite each
other.

"The same file" is decided two ways, so that no spelling of a path slips through:
- by the resolved path (os.path.realpath: symbolic links in every component, `..`
  and repeated slashes resolved), also for files that do not exist yet;
- by (st_dev, st_ino) for files that exist, following links: a hard link to an input,
  a link to it, the same folder reached through a bind mount or a case-insensitive
  file system are all the input itself.

Only names are compared: nothing here opens or writes a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from core.errors import UserError
from core.text import escape_text


class OutputClash(UserError):
    """An output path that is an input of the run, or another output of it."""


def _resolved(path: Path) -> str:
    return os.path.realpath(os.fspath(path))


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (resolved path, or device and inode when both exist)."""
    a, b = Path(a), Path(b)
    if _resolved(a) == _resolved(b):
        return True
    ia = _inode(a)
    return ia is not None and ia == _inode(b)


class OutputPlan:
    """The inputs of one run, and the outputs claimed so far.

    plan = OutputPlan(input_paths)
    plan.claim(dst, owner)   # OutputClash (one line) if dst is an input or claimed already
    """

    def __init__(self, inputs: Iterable[str | os.PathLike] = ()):
        self._input_paths: dict[str, Path] = {}
        self._input_inodes: dict[tuple[int, int], Path] = {}
        self._claimed: dict[str, str] = {}
        self._claimed_inodes: dict[tuple[int, int], str] = {}
        for item in inputs:
            self.add_input(item)

    def add_input(self, path: str | os.PathLike) -> None:
        path = Path(path)
        self._input_paths.setdefault(_resolved(path), path)
        inode = _inode(path)
        if inode is not None:
            self._input_inodes.setdefault(inode, path)

    def input_matching(self, output: str | os.PathLike) -> Path | None:
        """The input that `output` names (by resolved path or inode), or None."""
        output = Path(output)
        found = self._input_paths.get(_resolved(output))
        if found is None:
            inode = _inode(output)
            found = self._input_inodes.get(inode) if inode is not None else None
        return found

    def claim(self, output: str | os.PathLike, owner: str | os.PathLike | None = None) -> Path:
        """Register `output` as written by this run (for `owner`, named in refusals)."""
        output = Path(output)
        who = f"{escape_text(owner)}: " if owner is not None else ""
        clash = self.input_matching(output)
        if clash is not None:
            if owner is not None and same_file(clash, owner):
                what = "would replace this input"
            elif str(clash) == str(output):
                what = "is another input of this run"
            else:
                what = f"would replace {escape_text(clash)}, an input of this run"
            raise OutputClash(f"{who}refused: the output {escape_text(output)} {what}; inputs "
                              "are never replaced, even with --overwrite")
        key, inode = _resolved(output), _inode(output)
        earlier = self._claimed.get(key) or (self._claimed_inodes.get(inode) if inode else None)
        if earlier is not None:
            raise OutputClash(f"{who}refused: the output name {escape_text(output)} is already "
                              f"used by {earlier} in this run")
        self._claimed[key] = escape_text(owner if owner is not None else output)
        if inode is not None:
            self._claimed_inodes[inode] = self._claimed[key]
        return output

    def claim_all(self, outputs: Iterable[str | os.PathLike]) -> None:
        for output in outputs:
            self.claim(output)


def refused_outputs(jobs: Iterable[tuple[Path, Path]]) -> dict[Path, str]:
    """For the jobs of one run, each (input file, the output it makes): a one-line
    refusal per input whose output is an input of the run or the output of an earlier
    job. Decided for the whole run before anything is written."""
    jobs = list(jobs)
    plan = OutputPlan(source for source, _ in jobs)
    refused: dict[Path, str] = {}
    for source, output in jobs:
        try:
            plan.claim(output, source)
        except OutputClash as err:
            refused[source] = str(err)
    return refused
