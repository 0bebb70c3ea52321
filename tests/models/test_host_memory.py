"""port.host_memory: a buffer freed by one training step is reused by the next without
page faults (counted by the kernel, not timed)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_SCRIPT = textwrap.dedent("""
    import importlib.util, json, resource, sys, threading
    import numpy as np
    from numpy._core.multiarray import _set_madvise_hugepage
    spec = importlib.util.spec_from_file_location("host_memory", "port/host_memory.py")
    host_memory = importlib.util.module_from_spec(spec)  # without port/__init__'s imports
    spec.loader.exec_module(host_memory)
    keep_freed_memory = host_memory.keep_freed_memory
    _set_madvise_hugepage(False)  # count 4 KB pages, as XLA's buffers get them
    applied = keep_freed_memory() if sys.argv[1] == "keep" else None
    def step(out):  # as XLA does: a large scratch per step, from a worker thread
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        scratch = np.ones(256 * 2**20 // 4, np.float32)  # 256 MB, every page touched
        del scratch
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    faults = []
    for _ in range(3):
        t = threading.Thread(target=step, args=(faults,)); t.start(); t.join()
    print(json.dumps({"applied": applied, "faults": faults}))
""")


def _run(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True,
                         cwd=REPO, check=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_serves_the_next_steps_scratch_without_page_faults():
    pages = 256 * 2**20 // 4096
    plain, kept = _run("plain"), _run("keep")
    assert kept["applied"] is True
    # every step of the plain process faults its scratch in again; with the policy only
    # the first does
    assert all(f >= 0.9 * pages for f in plain["faults"]), plain
    assert kept["faults"][0] >= 0.9 * pages and all(f < 0.1 * pages for f in kept["faults"][1:]), kept

