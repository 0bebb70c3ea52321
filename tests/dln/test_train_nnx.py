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


def test_nnx_training_hands_out_its_average_logs_and_the_heldout_psnr_the_nnx_predictor_gives(
        tmp_path, capsys):
    """--ema, --eval-every, a LOL held-out folder: the files of a run, the average handed
    out (not the optimiser's weights), and the held-out PSNR the run logged equal to
    what `dln enhance --backend nnx`'s predictor gives on the handed-out weights (a
    separate path: the trainer's own apply vs the predictor's, 1x1 convs as dots;
    PNG values may flip by one level, so each PSNR is held to what that can move)."""
    from core.data import to_float
    from core.image_pairs import open_heldout_pairs
    from core.images import quantize
    from core.evaluation import psnr_uint8
    from frameworks.predictor import Predictor
    from parity.engine.tolerance import psnr_shift_bound_db
    from test_train import _lol
    from weights.training_checkpoint import load_state

    out = tmp_path / "run"
    heldout = _lol(tmp_path / "heldout")
    args = [*TINY, "--heldout", str(heldout), "--steps", "3", "--eval-every", "2",
            "--ema", "0.9", "--out", str(out)]
    assert main(["train", *args]) == 0
    captured = capsys.readouterr()
    assert "held-out PSNR (2 pairs)" in captured.out, captured.out
    assert "(Flax NNX)" in captured.out + captured.err
    for name in ("weights.safetensors", "optimizer.safetensors", "log.csv", "log.json",
                 "loss.png"):
        assert (out / name).is_file(), f"{name} missing"
    assert len((out / "log.csv").read_text().strip().splitlines()) == 1 + 3
    log = json.loads((out / "log.json").read_text())
    assert [e["step"] for e in log["evals"]] == [2, 3]
    _, state, _ = load_state(out)
    handed_out = load_checkpoint(out / "weights.safetensors").flax_params
    assert state.count == 3 and state.average is not None
    for name, value in state.average.items():
        np.testing.assert_array_equal(handed_out[name], value, err_msg=name)
    assert any(np.any(state.average[n] != state.params[n]) for n in state.params)
    pairs, _, _ = open_heldout_pairs(str(heldout))
    logged = log["summary"]["heldout"]["images"]
    assert [i["name"] for i in logged] == [p.name for p in pairs]
    predictor = Predictor(load_checkpoint(out / "weights.safetensors"), "nnx")
    for image, pair in zip(logged, pairs):
        output = quantize(predictor.predict(to_float(pair.low)))
        psnr = psnr_uint8(output, pair.high)
        bound = psnr_shift_bound_db(output, pair.high)
        assert abs(image["psnr_enhanced_db"] - psnr) <= bound, (image, psnr, bound)
