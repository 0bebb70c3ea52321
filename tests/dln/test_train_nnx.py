"""`dln train --framework nnx`: the Flax NNX trainer through the one training loop."""

from __future__ import annotations

import json

import numpy as np

from dln.cli import main
from weights.convert import load_checkpoint

TINY = ["--framework", "nnx", "--variant", "dim=16", "--batch", "2", "--patch", "24",
        "--lr", "1e-4", "--data", "builtin:grass,gravel,coins", "--heldout", "none",
        "--workers", "0"]


def test_nnx_training_resumed_repeats_the_uninterrupted_run_bit_for_bit(tmp_path, capsys):
    """Resuming restores the weights and nnx.Optimizer's Adam moments and step count from
    the framework-neutral checkpoint (a reset of either changes the second step)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", *TINY, "--steps", "2", "--out", str(straight)]) == 0
    captured = capsys.readouterr()
    assert "(Flax NNX)" in captured.out + captured.err
    assert main(["train", *TINY, "--steps", "1", "--out", str(resumed)]) == 0
    assert main(["train", *TINY, "--steps", "2", "--resume", "--out", str(resumed)]) == 0
    rows = [json.loads((run / "log.json").read_text())["rows"] for run in (straight, resumed)]
    assert [r["loss"] for r in rows[0]] == [r["loss"] for r in rows[1]]
    assert rows[0][0]["loss"] != rows[0][1]["loss"]
    a = load_checkpoint(straight / "weights.safetensors")
    b = load_checkpoint(resumed / "weights.safetensors")
    assert sorted(a.flax_params) == sorted(b.flax_params) and len(a.flax_params) == 125
    assert all(a.flax_params[k].tobytes() == b.flax_params[k].tobytes() for k in a.flax_params)
