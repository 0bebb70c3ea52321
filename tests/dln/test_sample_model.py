"""The committed sample model does what its model card says it does.

The per-image held-out PSNRs are the figures published in weights/sample/README.md
(measured by the trainer at the end of training, on the GPU it was trained on); they
are parsed from the card, not produced by the code under test, and must hold on this
CPU to 0.01 dB (the card's two decimals). Run on the JAX backend: the PyTorch backend's
PNGs equal JAX's under the one-level rule (tests/dln/test_determinism.py,
tests/parity/test_table2.py), the reference network's outputs are held to the port's
block by block by the parity tests, and `make table2` prints both backends' PSNRs for
this model (docs/table2.md: equal to the printed digits); running it here too cost 18 s
of the suite's budget.
"""

import re

import pytest

from core.paths import SAMPLE_CHECKPOINT

CARD = SAMPLE_CHECKPOINT.parent / "README.md"
CARD_ROW = re.compile(r"^\| (\w+) \| ([\d.]+) dB \| ([\d.]+) dB", re.MULTILINE)


def published_heldout_psnr() -> dict[str, tuple[float, float]]:
    """{image: (low-light dB, enhanced dB)} from the model card's held-out table."""
    rows = {name: (float(low), float(enhanced))
            for name, low, enhanced in CARD_ROW.findall(CARD.read_text())}
    rows.pop("mean", None)
    assert set(rows) == {"chelsea", "coffee", "rocket"}, rows
    return rows


@pytest.mark.parametrize("backend", ["jax"])
def test_sample_model_gives_the_model_cards_heldout_psnr_per_image_to_001_db(backend):
    from dln.heldout import evaluate_checkpoint

    published = published_heldout_psnr()
    result = evaluate_checkpoint(str(SAMPLE_CHECKPOINT), backend=backend)
    assert result.names == sorted(published), result.names
    for name, low, enhanced in zip(result.names, result.psnr_low, result.psnr_enhanced):
        card_low, card_enhanced = published[name]
        assert abs(low - card_low) <= 0.005 + 1e-9, (name, low, card_low)
        assert abs(enhanced - card_enhanced) <= 0.01, (backend, name, enhanced, card_enhanced)
    assert result.gain >= 5.0, result.text()  # the floor the sample model was made to clear


def test_sample_model_is_the_full_width_authors_layout_network():
    import torch

    from weights.convert import load_checkpoint

    raw = torch.load(SAMPLE_CHECKPOINT, weights_only=True)
    assert all(k.startswith("module.") for k in raw) and len(raw) == 125
    ckpt = load_checkpoint(SAMPLE_CHECKPOINT)
    assert ckpt.parameter_count == 700_586 and ckpt.config.dim == 64
