"""Paper-versus-code switches: layer parity for every combination, the variant travelling
with the weights through `dln convert`, refusals, and gamma as inference-time strength."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dln.cli import main
from core.config import DLNConfig
from core.paths import SAMPLE_IMAGES
from parity.engine.torch_side import torch_threads
from parity.presets.dln import random_inputs, run_parity
from tests.conftest import write_authors_pth
from weights.convert import checkpoint_from_torch_state, load_checkpoint
from weights.files import read_safetensors_metadata
from weights.synthetic import random_torch_state

PAPER_16 = DLNConfig(dim=16, brightness=False, gamma=0.5, residual_sign="paper")


@pytest.mark.parametrize("gamma", [1.0, 0.5])
@pytest.mark.parametrize("sign", ["code", "paper"])
@pytest.mark.parametrize("brightness", [True, False])
def test_every_variant_passes_layer_parity_at_1e5(brightness, sign, gamma):
    cfg = DLNConfig(dim=16, brightness=brightness, residual_sign=sign, gamma=gamma)
    run = run_parity(checkpoint_from_torch_state(random_torch_state(cfg, 11), cfg),
                     random_inputs((13, 17), 2, seed=2), tol=1e-5)
    worst = run.report.worst
    assert run.passed, f"{cfg.variant_string()}: first divergence {run.first_divergence}"
    assert run.details["config"] == dataclasses.asdict(cfg) and len(run.report.rows) == 62
    assert worst.rel_to_scale <= 1e-5, f"{worst.name} {worst.rel_to_scale:.2e}"
    feat1 = next(r for r in run.report.rows if r.name == "feat1")
    assert feat1.torch_shape == (2, 13, 17, 32)


def test_cli_runs_any_combination_and_records_it(tmp_path):
    variant = "brightness=off,residual_sign=paper,gamma=0.5,dim=16"
    assert main(["parity", "--variant", variant, "--size", "13x17",
                 "--report", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["config"] == {"dim": 16, "brightness": False, "gamma": 0.5,
                                "residual_sign": "paper"}
    assert report["first_divergence"] is None


@pytest.fixture
def paper_pth(tmp_path):
    """An authors'-layout file of a paper-variant network: 3-channel feat1, no metadata."""
    return write_authors_pth(tmp_path / "paper.pth", random_torch_state(PAPER_16, seed=7))


def _pth_config(path: Path) -> DLNConfig:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return DLNConfig.from_json(state._metadata[""]["dln_config"])


def test_variant_round_trips_through_convert_in_both_directions(tmp_path, paper_pth):
    st, back, st2 = tmp_path / "a.safetensors", tmp_path / "back.pth", tmp_path / "b.safetensors"
    # brightness=off is read from feat1's 3 input channels; sign and gamma must be told
    assert main(["convert", str(paper_pth), str(st),
                 "--variant", "residual_sign=paper,gamma=0.5"]) == 0
    assert DLNConfig.from_json(read_safetensors_metadata(st)["config"]) == PAPER_16
    assert main(["convert", str(st), str(back)]) == 0
    assert _pth_config(back) == PAPER_16
    assert main(["convert", str(back), str(st2)]) == 0  # no --variant: the file tells
    assert DLNConfig.from_json(read_safetensors_metadata(st2)["config"]) == PAPER_16
    a, b = load_checkpoint(st), load_checkpoint(st2)
    assert all(a.flax_params[k].tobytes() == b.flax_params[k].tobytes() for k in a.flax_params)
    # dln parity reads the variant from either file
    assert main(["parity", "--weights", str(back), "--size", "13x17",
                 "--report", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["config"] == {"dim": 16, "brightness": False, "gamma": 0.5,
                                "residual_sign": "paper"}


def test_enhance_reads_the_variant_from_the_converted_file(tmp_path, paper_pth):
    st = tmp_path / "a.safetensors"
    assert main(["convert", str(paper_pth), str(st),
                 "--variant", "residual_sign=paper,gamma=0.5"]) == 0
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray((rng.random((13, 17, 3)) * 80).astype(np.uint8)).save(folder / "x.png")
    assert main(["enhance", "--weights", str(st), "--output", str(tmp_path / "o1"),
                 str(folder)]) == 0
    assert main(["enhance", "--weights", str(paper_pth), "--variant", "residual_sign=paper",
                 "--gamma", "0.5", "--output", str(tmp_path / "o2"), str(folder)]) == 0
    assert main(["enhance", "--weights", str(paper_pth), "--output", str(tmp_path / "o3"),
                 str(folder)]) == 0  # code sign, gamma 1: a different image
    o1, o2, o3 = (np.asarray(Image.open(tmp_path / d / "x.png")) for d in ("o1", "o2", "o3"))
    np.testing.assert_array_equal(o1, o2)
    assert np.abs(o1.astype(int) - o3).max() > 0


@pytest.mark.parametrize("command,words", [
    ("convert", "brightness=on was requested"),
    ("parity", "residual_sign=code was requested"),
    ("enhance", "brightness"),
])
def test_checkpoint_contradicting_the_variant_is_refused_in_one_line(tmp_path, paper_pth, capsys,
                                                                     command, words):
    st = tmp_path / "a.safetensors"
    assert main(["convert", str(paper_pth), str(st), "--variant", "residual_sign=paper"]) == 0
    capsys.readouterr()
    argv = {"convert": ["convert", str(paper_pth), str(tmp_path / "x.safetensors"),
                        "--variant", "brightness=on"],
            "parity": ["parity", "--weights", str(st), "--variant", "residual_sign=code"],
            "enhance": ["enhance", "--weights", str(st), "--variant", "brightness=on",
                        "--output", str(tmp_path / "o"), str(tmp_path)]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "conflict" in err and words in err, err
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "o").exists()


def test_refusal_from_the_installed_command_has_no_traceback(tmp_path, paper_pth):
    proc = subprocess.run([sys.executable, "-m", "dln.cli", "parity", "--weights", str(paper_pth),
                           "--variant", "brightness=on"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr and "brightness" in lines[0], lines


def _brightening_pth(path: Path) -> Path:
    """Seeded dim-16 weights whose residual brightens, like a trained enhancer: the last
    conv's weights are scaled by 1/4 and its bias set to +0.15, so P(x) > 0 on average.
    (Seeded random weights rather than the trained sample checkpoint: a dim-16 network
    runs the three full-size samples four times in seconds.)"""
    state = random_torch_state(DLNConfig(dim=16), seed=0)
    state["out.weight"] = state["out.weight"] * np.float32(0.25)
    state["out.bias"] = np.full(3, 0.15, np.float32)
    return write_authors_pth(path, state)


def test_gamma_zero_returns_the_input_and_brightness_rises_with_gamma(tmp_path):
    """`dln enhance --gamma` on a full-size sample (torch backend, one thread: on this
    2-core machine that is ~3x faster than two; JAX's gamma is held to torch's by the
    variant parity above). One of the three samples: the rule is per pixel."""
    weights = _brightening_pth(tmp_path / "bright.pth")
    folder = tmp_path / "low"
    folder.mkdir()
    first = sorted((SAMPLE_IMAGES / "low").glob("*.png"))[0]
    (folder / first.name).write_bytes(first.read_bytes())
    low = [folder / first.name]
    inputs = [np.asarray(Image.open(p).convert("RGB")) for p in low]
    means = []
    for gamma in ("0", "0.5", "1", "1.5"):
        out = tmp_path / f"g{gamma}"
        with torch_threads(1):
            assert main(["enhance", "--weights", str(weights), "--gamma", gamma, "--backend",
                         "torch", "--output", str(out), str(folder)]) == 0
        outputs = [np.asarray(Image.open(out / p.name)) for p in low]
        if gamma == "0":
            for p, a, b in zip(low, inputs, outputs):
                np.testing.assert_array_equal(b, a, err_msg=f"gamma=0 changed {p.name}")
        means.append(float(np.mean([o.mean() for o in outputs])))
    assert all(b > a for a, b in zip(means, means[1:])), f"mean brightness per gamma: {means}"
    assert means[2] - means[0] > 5, means  # the weights do change the images
