"""A training checkpoint is atomic as a unit: a run killed at any point of saving
resumes from the latest complete step and ends exactly where an uninterrupted run
ends, and OUT/weights.safetensors stays a whole, loadable file throughout.

The kill is real: the child process SIGKILLs itself just before its K-th rename of
a checkpoint file or step folder (no clean-up can run, as after a power loss).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from weights.convert import load_checkpoint
from weights.training_checkpoint import load_state

REPO = Path(__file__).resolve().parents[2]
TINY = ["train", "--framework", "torch", "--variant", "dim=16", "--batch", "2", "--patch", "24",
        "--lr", "1e-4", "--data", "builtin:grass,gravel,coins", "--heldout", "none",
        "--workers", "0", "--steps", "4", "--save-every", "2"]
# Renames while saving: optimizer and weights inside the step folder, the step folder,
# then OUT/weights.safetensors and OUT/optimizer.safetensors. Step 2 makes renames 1-5,
# step 4 renames 6-10.
KILL_BEFORE = {"between the optimizer and the weights file": 7,
               "between the two files beside the step folders": 10}

CHILD = """
import json, os, signal, sys
kill_at = int(sys.argv[1])
seen = [0]
def counting(real):
    def wrapped(src, dst, *args, **kwargs):
        name = os.path.basename(os.fspath(dst))
        if name.endswith(".safetensors") or name.startswith("step-"):
            seen[0] += 1
            if seen[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *args, **kwargs)
    return wrapped
os.replace, os.rename = counting(os.replace), counting(os.rename)
from dln.cli import main
for argv in json.loads(sys.argv[2]):
    code = main(argv)
    if code:
        sys.exit(code)
"""


def _child(kill_at: int, *runs: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "DLN_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", CHILD, str(kill_at), json.dumps(list(runs))],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _assert_same_state(expected_dir: Path, out: Path, case: str) -> None:
    _, expected, _ = load_state(expected_dir)
    _, got, _ = load_state(out)
    assert got.count == expected.count == 4, case
    for name in expected.params:
        for what, a, b in (("weight", expected.params, got.params),
                           ("mu", expected.mu, got.mu), ("nu", expected.nu, got.nu)):
            assert np.array_equal(a[name], b[name]), f"{case}: {what} {name} differs"
    final = load_checkpoint(out / "weights.safetensors").flax_params
    for name, value in expected.params.items():
        assert np.array_equal(final[name], value), f"{case}: published weights {name}"


def test_a_kill_at_any_point_of_saving_resumes_to_the_uninterrupted_result(tmp_path):
    outs = {}
    for case, kill_at in KILL_BEFORE.items():
        out = tmp_path / f"killed{kill_at}"
        done = _child(kill_at, [*TINY, "--out", str(out)])
        assert done.returncode == -9, (case, done.stderr[-2000:])
        # whatever the moment, the published weights are a whole file of some step
        assert load_checkpoint(out / "weights.safetensors").config.dim == 16, case
        outs[case] = out
    straight = tmp_path / "straight"
    runs = [[*TINY, "--out", str(straight)]]
    runs += [[*TINY, "--resume", "--out", str(out)] for out in outs.values()]
    done = _child(0, *runs)
    assert done.returncode == 0, done.stderr[-2000:]
    for case, out in outs.items():
        _assert_same_state(straight, out, case)
        leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
        assert leftovers == [], f"{case}: {leftovers}"


def test_resume_skips_a_damaged_newest_step_for_the_previous_complete_one(tmp_path):
    import shutil

    from core.config import DLNConfig
    from weights.initial import authors_initial_state
    from weights.training_checkpoint import (TrainingCheckpoint, save_state, step_folders,
                                             torch_to_flax_state)

    config = DLNConfig(dim=16)
    params = torch_to_flax_state(authors_initial_state(config, 0, False), config)
    moments = {k: np.zeros_like(v) for k, v in params.items()}
    out = tmp_path / "run"
    for count in (2, 4):
        save_state(out, config, TrainingCheckpoint(params, moments, moments, count), "{}")
    (complete,) = step_folders(out)  # only the newest complete step is kept
    damaged = complete.parent / "step-00000006"
    shutil.copytree(complete, damaged)
    (damaged / "weights.safetensors").write_bytes(b"damaged")
    assert step_folders(out)[0] == damaged
    _, got, _ = load_state(out)
    assert got.count == 4
