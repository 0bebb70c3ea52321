"""Transparent huge pages for glibc's large allocations in `dln enhance` processes.

XLA's CPU runtime allocates a program's scratch afresh at every execution; glibc serves
buffers that large with a fresh mmap and unmaps them on free, so each tile of a tiled
run faults its scratch in again, 4 KiB page by page (hundreds of MB per tile at tile
512). glibc can ask the kernel to back those maps with 2 MiB pages instead (the tunable
`glibc.malloc.hugetlb=1`, which it reads only when a process starts; on kernels whose
transparent huge pages are in "madvise" mode, the usual default, nothing else asks for
them). Measured on the 2-core AMD EPYC, one 12 MP photo with `--tile 512`, interleaved:
181.6 s with 87.9 s of system CPU time, against 146.1 s with 31.8 s with the tunable,
peak RSS 2,150 against 1,938 MiB; the folder workload of `dln bench` unchanged within
its noise (warm 43.9 s both, a slow phase of the host). The arithmetic is untouched.

`reexec_with_huge_pages()` therefore runs `dln enhance` on a JAX backend (jax, the
default, or nnx) again, once, in the same process (exec: same PID, same signals and
exit status), with the tunable added to GLIBC_TUNABLES, before anything heavy is
imported (~0.05 s). Like the CPU split, it is part of the JAX path: the PyTorch
backends keep glibc's defaults, the baseline `dln bench` compares against (PyTorch
eager gains from the tunable too, as from the tuned allocator of its
`torch-tuned-glibc` row: `GLIBC_TUNABLES=glibc.malloc.hugetlb=1 dln enhance --backend
torch ...`). It does nothing off Linux or glibc < 2.35, where the kernel's huge pages
are "never", when GLIBC_TUNABLES already sets glibc.malloc.hugetlb (the user's choice,
and what stops a second exec), or when DLN_HUGE_PAGES is off/0/false/no.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from dln.own_package import interpreter_argv
from port.host_devices import switched_off

TUNABLE = "glibc.malloc.hugetlb"
SWITCH = "DLN_HUGE_PAGES"
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _glibc_has_the_tunable() -> bool:
    name, version = platform.libc_ver()
    if name != "glibc":
        return False
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (2, 35)


def _kernel_offers_huge_pages() -> bool:
    try:
        return "[never]" not in THP_SETTING.read_text()
    except OSError:
        return False


def huge_pages_environment(environ: dict) -> dict | None:
    """`environ` with the tunable added, or None when it should not (module docstring)."""
    if switched_off(environ, SWITCH):
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in tunables:
        return None
    if not (sys.platform.startswith("linux") and _glibc_has_the_tunable()
            and _kernel_offers_huge_pages()):
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(t for t in (tunables, f"{TUNABLE}=1") if t)}


JAX_BACKENDS = ("jax", "nnx")


def reexec_with_huge_pages(args: list[str], backend: str) -> None:
    """Replace this process by `dln *args` with the tunable set, when it applies: a JAX
    `backend` (as parsed from `args`) and huge_pages_environment (returns when it does
    not, or when the exec fails: the command then runs as it is). The new interpreter
    imports this very package (dln.own_package: never a `dln` the working folder
    holds)."""
    if backend not in JAX_BACKENDS:
        return
    environ = huge_pages_environment(dict(os.environ))
    if environ is None:
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        os.execve(sys.executable,
                  [*interpreter_argv("from dln.cli import main; sys.exit(main())"), *args],
                  environ)
    except OSError:
        return
