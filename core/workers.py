"""Worker subprocesses: how the toolkit starts `python -m <module>` in a fresh process.

Framework-neutral (it only starts processes). Parity keeps the two frameworks apart in separate processes where sharing one has
crashed (JAX float64 beside torch inside XLA), or where a measurement needs a clean
process of its own (one benchmark backend per process). All of them start here, the
same way: this interpreter (`sys.executable -m module args...`), run from the folder
that holds the project's packages, with text pipes for stdout and stderr, the
environment of this process plus DLN_NO_PROGRESS=1 (a worker never draws a progress
bar) plus what the caller adds.

- `start_worker` starts one and returns the Popen (stdin a pipe too when the caller
  converses with it line by line, as the benchmark does);
- `finish_worker` waits for it (with a timeout) and turns a non-zero exit or a
  timeout into one WorkerError carrying the last lines of its stderr;
- `run_worker` is the two in one, for a worker that only reads files and writes files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the folder holding parity/, port/, ...
TAIL_LINES = 15


class WorkerError(RuntimeError):
    """A worker process that failed, timed out, or could not be started."""


def start_worker(module: str, *args: str, env: dict | None = None,
                 conversation: bool = False) -> subprocess.Popen:
    """Start `python -m module args...`; env entries are added to this process's
    environment (and DLN_NO_PROGRESS=1). conversation=True also opens stdin, line
    buffered, for a request/reply dialogue."""
    extra = {"stdin": subprocess.PIPE, "bufsize": 1} if conversation else {}
    return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=PROJECT_ROOT,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "DLN_NO_PROGRESS": "1", **(env or {})},
                            **extra)


def finish_worker(proc: subprocess.Popen, label: str, timeout: float | None = None) -> str:
    """Wait for proc; its stdout, or WorkerError('<label> worker failed (exit N): tail')."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise WorkerError(f"{label} worker took over {timeout:g} s") from None
    if proc.returncode != 0:
        tail = "\n".join((err or out or "").strip().splitlines()[-TAIL_LINES:])
        raise WorkerError(f"{label} worker failed (exit {proc.returncode}):\n{tail}")
    return out


def run_worker(module: str, *args: str, label: str, env: dict | None = None,
               timeout: float | None = None) -> str:
    """Run a worker to its end; its stdout (WorkerError on failure, see finish_worker)."""
    return finish_worker(start_worker(module, *args, env=env), label, timeout)
