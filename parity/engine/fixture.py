"""The CI regression fixture: PyTorch reference outputs of every block, stored in tests/.

    python -m parity.engine.fixture --out tests/fixtures

writes two safetensors files (about 0.8 MB together):
- parity_dim16_weights.safetensors: seeded random weights (dim 16, authors' code
  variant) in Flax names/layouts, written by the converter (`dln convert` format);
- parity_dim16_reference.safetensors: the input batch (`input`, NHWC 2 x 9 x 11 x 3)
  and the output of every block as `reference_torch` computes it (`block/<torch name>`,
  NHWC), with the execution order, config and torch version in the metadata.

The test tests/parity/test_parity_fixture.py compares the Flax port against these files
block by block without running PyTorch. Everything is seeded, so regenerating on the
same library versions gives the same values.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from core.config import DLNConfig

CONFIG = DLNConfig(dim=16)
WEIGHTS_SEED = 16
INPUT_SEED = 9
SHAPE = (2, 9, 11, 3)  # batch > 1, odd and non-square, small enough to keep the files small
WEIGHTS_FILE = "parity_dim16_weights.safetensors"
REFERENCE_FILE = "parity_dim16_reference.safetensors"
BLOCK_PREFIX = "block/"
REGENERATE = "python -m parity.engine.fixture --out tests/fixtures"
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "tests" / "fixtures"


def fixture_input() -> np.ndarray:
    return np.random.default_rng(INPUT_SEED).random(SHAPE, dtype=np.float32)


def build(out_dir: str | Path = DEFAULT_DIR) -> tuple[Path, Path]:
    """Write both fixture files into out_dir; returns their paths."""
    import torch

    from parity.engine.capture import capture_torch
    from reference_torch.inference import model_from_state
    from weights.convert import checkpoint_from_torch_state, save_checkpoint
    from weights.files import save_safetensors
    from weights.synthetic import random_torch_state

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = random_torch_state(CONFIG, seed=WEIGHTS_SEED)
    ckpt = checkpoint_from_torch_state(
        state, CONFIG, source=f"random_torch_state(dim={CONFIG.dim}, seed={WEIGHTS_SEED})")
    weights_path = out_dir / WEIGHTS_FILE
    save_checkpoint(ckpt, weights_path)

    x = fixture_input()
    outputs = capture_torch(model_from_state(state, CONFIG), x)
    tensors = {"input": x, **{BLOCK_PREFIX + name: value for name, value in outputs.items()}}
    metadata = {
        "config": CONFIG.to_json(),
        "block_order": json.dumps(list(outputs)),
        "layout": "NHWC (dense outputs (N, C)); keys block/<torch module name>",
        "made_by": f"reference_torch.model.DLN, torch {torch.__version__}",
        "weights_file": WEIGHTS_FILE,
        "regenerate": REGENERATE,
    }
    reference_path = out_dir / REFERENCE_FILE
    save_safetensors(tensors, reference_path, metadata)
    return weights_path, reference_path


def load_reference(folder: str | Path = DEFAULT_DIR):
    """(input NHWC, OrderedDict torch name -> reference output, metadata)."""
    from collections import OrderedDict

    from weights.files import load_safetensors

    arrays, metadata = load_safetensors(Path(folder) / REFERENCE_FILE)
    order = json.loads(metadata["block_order"])
    outputs = OrderedDict((name, arrays[BLOCK_PREFIX + name]) for name in order)
    return arrays["input"], outputs, metadata


def run_fixture_check(folder: str | Path = DEFAULT_DIR, tol: float | None = None,
                      defect: str | None = None):
    """(ParityRun, Checkpoint): the Flax port against the stored reference of every block
    (`dln parity --fixture`); no PyTorch run. FixtureError when the files are unusable."""
    from core.errors import UserError
    from parity.engine.block_compare import compare_blocks
    from parity.engine.harness import ParityInputs, ParityRun, run_jax_side
    from parity.engine.tolerance import FORWARD_ATOL
    from weights.convert import load_checkpoint

    folder = Path(folder)
    for name in (WEIGHTS_FILE, REFERENCE_FILE):
        if not (folder / name).is_file():
            raise UserError(f"--fixture {folder}: no {name} there (make it with {REGENERATE})")
    try:
        x, reference, metadata = load_reference(folder)
    except (KeyError, ValueError) as err:
        raise UserError(f"--fixture {folder}: not a parity fixture ({err})") from None
    ckpt = load_checkpoint(folder / WEIGHTS_FILE)
    side = run_jax_side(ckpt, x, list(reference), defect)
    layers = compare_blocks(reference, side.outputs, FORWARD_ATOL if tol is None else tol)
    inputs = ParityInputs(x, f"the fixture's input batch {x.shape[1]}x{x.shape[2]} "
                             f"(stored outputs: {metadata.get('made_by', 'reference_torch')})")
    run = ParityRun(layers, ckpt.config, side.config, str(folder / WEIGHTS_FILE), inputs, defect,
                    side.defect_summary, list(ckpt.notes) + side.notes,
                    {"torch": 0.0, "jax": 0.0, "total": 0.0})
    return run, ckpt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parity.engine.fixture", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(DEFAULT_DIR), help="folder (default tests/fixtures)")
    args = parser.parse_args(argv)
    for path in build(args.out):
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
