"""CI regression fixture: the Flax port against stored PyTorch block outputs.

tests/fixtures/ holds weights and the reference outputs of every block made by
reference_torch (regenerate with `python -m parity.engine.fixture --out tests/fixtures`).
These tests need no PyTorch run: a change to the port that moves any block shows here.
"""

import json

from parity.engine import fixture
from parity.engine.harness import run_jax_side
from parity.engine.block_compare import compare_blocks
from parity.engine.tolerance import FORWARD_ATOL
from weights.convert import load_checkpoint


def _load():
    x, reference, metadata = fixture.load_reference()
    ckpt = load_checkpoint(fixture.DEFAULT_DIR / fixture.WEIGHTS_FILE)
    return x, reference, metadata, ckpt


def test_flax_port_matches_the_stored_torch_outputs_block_by_block():
    x, reference, metadata, ckpt = _load()
    assert ckpt.config == fixture.CONFIG and json.loads(metadata["config"])["dim"] == 16
    side = run_jax_side(ckpt, x, list(reference))
    report = compare_blocks(reference, side.outputs, FORWARD_ATOL)
    worst = report.worst
    assert report.passed, (f"first divergence {report.first_divergence}: "
                           f"{[r for r in report.rows if not r.passed][:1]}")
    assert worst.rel_to_scale <= FORWARD_ATOL, f"worst {worst.name} {worst.rel_to_scale:.2e}"
    assert len(report.rows) == 62


def test_fixture_holds_every_block_of_the_reference_model():
    from reference_torch.model import DLN

    from parity.engine.capture import PREDICTION, torch_block_names

    x, reference, _, _ = _load()
    assert x.shape == fixture.SHAPE
    assert set(reference) == set(torch_block_names(DLN(fixture.CONFIG))) | {PREDICTION}


def test_fixture_catches_a_defective_port():
    x, reference, _, ckpt = _load()
    side = run_jax_side(ckpt, x, list(reference), defect="kernel-flip")
    report = compare_blocks(reference, side.outputs, FORWARD_ATOL)
    assert report.first_divergence == "feat1", report.first_divergence


def test_fixture_files_stay_small():
    total = sum((fixture.DEFAULT_DIR / name).stat().st_size
                for name in (fixture.WEIGHTS_FILE, fixture.REFERENCE_FILE))
    assert total < 1_000_000, total
