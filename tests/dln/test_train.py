"""`dln train`: outputs, resume = uninterrupted run, refusals, identity start.

JAX runs in this process; PyTorch training runs in a subprocess (torch and JAX
computing gradients in one process have crashed inside XLA).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from dln.cli import main
from weights.training_checkpoint import load_state

REPO = Path(__file__).resolve().parents[2]
TINY = ["--variant", "dim=16", "--batch", "2", "--patch", "24", "--lr", "1e-4",
        "--data", "builtin:grass,gravel,coins", "--heldout", "none", "--workers", "0"]


def _lol(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        high = rng.integers(0, 256, size=(30, 44, 3), dtype=np.uint8)
        for kind, image in (("high", high), ("low", high // 4)):
            (root / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / kind / f"{name}.png")
    return root


def _dln_runs_in_subprocess(*runs: list[str]) -> subprocess.CompletedProcess:
    """Run several `dln` command lines, in order, in one fresh Python process."""
    import json

    env = {**os.environ, "DLN_NO_PROGRESS": "1",
           "OMP_NUM_THREADS": "1"}  # torch's thread pool stalls on a busy machine
    code = ("import json, sys\nfrom dln.cli import main\n"
            f"for args in json.loads({json.dumps(json.dumps(runs))}):\n"
            "    code = main(args)\n"
            "    if code:\n"
            "        sys.exit(code)\n")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _same_run(straight: Path, resumed: Path) -> None:
    _, a, _ = load_state(straight)
    _, b, _ = load_state(resumed)
    assert a.count == b.count == 4
    for name in a.params:
        for what, x, y in (("weight", a.params, b.params), ("mu", a.mu, b.mu), ("nu", a.nu, b.nu)):
            worst = float(np.max(np.abs(x[name] - y[name])))
            assert worst == 0.0, f"{what} {name} differs by {worst:.3e} after resume"
    import json

    rows_a = json.loads((straight / "log.json").read_text())["rows"]
    rows_b = json.loads((resumed / "log.json").read_text())["rows"]
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4]


def test_jax_resume_repeats_the_uninterrupted_run_exactly(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", *TINY, "--steps", "4", "--out", str(straight)]) == 0
    assert main(["train", *TINY, "--steps", "2", "--out", str(resumed)]) == 0
    assert main(["train", *TINY, "--steps", "4", "--resume", "--out", str(resumed)]) == 0
    _same_run(straight, resumed)


def test_torch_resume_repeats_the_uninterrupted_run_exactly(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    torch_args = ["train", *TINY, "--framework", "torch"]
    done = _dln_runs_in_subprocess([*torch_args, "--steps", "4", "--out", str(straight)],
                                   [*torch_args, "--steps", "2", "--out", str(resumed)],
                                   [*torch_args, "--steps", "4", "--resume", "--out", str(resumed)])
    assert done.returncode == 0, done.stderr[-2000:]
    _same_run(straight, resumed)


def test_dln_train_writes_weights_logs_plot_and_heldout_psnr(tmp_path, capsys):
    import json

    from weights.convert import load_checkpoint

    out = tmp_path / "run"
    heldout = _lol(tmp_path / "heldout")
    args = [*TINY, "--heldout", str(heldout), "--steps", "3", "--eval-every", "2",
            "--zero-last-conv", "--out", str(out)]
    assert main(["train", *args]) == 0
    printed = capsys.readouterr().out
    assert "held-out PSNR (2 pairs)" in printed, printed
    for name in ("weights.safetensors", "optimizer.safetensors", "log.csv", "log.json",
                 "loss.png"):
        assert (out / name).is_file(), f"{name} missing"
    csv_lines = (out / "log.csv").read_text().strip().splitlines()
    assert csv_lines[0] == "step,epoch,lr,loss,elapsed_s" and len(csv_lines) == 4
    log = json.loads((out / "log.json").read_text())
    assert [e["step"] for e in log["evals"]] == [2, 3]
    final = log["summary"]["heldout"]
    assert len(final["images"]) == 2 and np.isfinite(final["gain_db"])
    ckpt = load_checkpoint(out / "weights.safetensors")
    assert ckpt.config.dim == 16 and np.any(ckpt.torch_state["out.weight"] != 0)
    with Image.open(out / "loss.png") as im:
        assert im.size[0] > 400


def test_train_refuses_to_overwrite_a_run_or_resume_with_other_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", *TINY, "--steps", "1", "--out", str(out)]) == 2
    assert main(["train", *TINY, "--steps", "2", "--seed", "5", "--resume", "--out", str(out)]) == 2
    assert main(["train", *TINY, "--steps", "2", "--resume", "--out",
                 str(tmp_path / "empty")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3, errors
    assert "--resume" in errors[0] and "seed" in errors[1] and "missing" in errors[2]


def test_zero_last_conv_makes_the_untrained_network_the_identity():
    import jax
    import jax.numpy as jnp
    import torch

    from core.config import DLNConfig
    from weights.initial import authors_initial_state
    from weights.training_checkpoint import torch_to_flax_state
    from weights.trees import nest_tree
    from port.model import DLN as FlaxDLN
    from reference_torch.inference import model_from_state

    config = DLNConfig(dim=16)
    state = authors_initial_state(config, seed=1, zero_last_conv=True)
    x = np.random.default_rng(0).random((1, 20, 28, 3), dtype=np.float32)
    apply = jax.jit(FlaxDLN(config).apply)
    flax_out = apply({"params": nest_tree(torch_to_flax_state(state, config), sep=".")}, jnp.asarray(x))
    assert np.array_equal(np.asarray(flax_out), x), "JAX: untrained network is not the identity"
    with torch.no_grad():
        torch_out = model_from_state(state, config)(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    assert np.array_equal(torch_out.numpy().transpose(0, 2, 3, 1), x), "torch: not the identity"


def test_asking_for_more_jax_devices_than_exist_is_one_line(tmp_path, capsys):
    code = main(["train", *TINY, "--steps", "1", "--devices", "3", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "3 devices" in err[0], err
