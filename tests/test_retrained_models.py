"""The CPU-trained pair of Table 2 (weights/retrained_jax, weights/retrained_torch: one
recipe, one seed, one initialisation, trained with `dln train --framework jax` and
`--framework torch`) does what its model cards say, re-checked with the JAX port on CPU:
each held-out image's PSNR as tabled in the card (to 0.01 dB), and the two training
frameworks within 0.75 dB of each other."""

from __future__ import annotations

import re

import pytest

from core.paths import package_folder

WEIGHTS = package_folder("weights")
MODELS = {"jax": WEIGHTS / "retrained_jax" / "dln_retrained_jax.pth",
          "torch": WEIGHTS / "retrained_torch" / "dln_retrained_torch.pth"}
# a row of a model card's held-out table: | image | low-light | enhanced |
ROW = re.compile(r"^\| (\w+) \| ([0-9.]+) dB \| ([0-9.]+) dB", re.MULTILINE)


def card_table(checkpoint) -> dict[str, tuple[float, float]]:
    text = (checkpoint.parent / "README.md").read_text()
    return {name: (float(low), float(enhanced)) for name, low, enhanced in ROW.findall(text)}


@pytest.fixture(scope="module")
def measured():
    from dln.heldout import evaluate_checkpoint

    return {fw: evaluate_checkpoint(str(path), backend="jax") for fw, path in MODELS.items()}


@pytest.mark.parametrize("framework", sorted(MODELS))
def test_heldout_psnr_per_image_is_the_model_cards(measured, framework):
    result, card = measured[framework], card_table(MODELS[framework])
    assert set(card) == set(result.names) | {"mean"}, sorted(card)
    for name, low, enhanced in zip(result.names, result.psnr_low, result.psnr_enhanced):
        assert card[name][0] == pytest.approx(low, abs=0.01), name
        assert card[name][1] == pytest.approx(enhanced, abs=0.01), name
    assert card["mean"][0] == pytest.approx(result.mean_low, abs=0.01)
    assert card["mean"][1] == pytest.approx(result.mean_enhanced, abs=0.01)


def test_the_training_framework_moves_heldout_psnr_by_at_most_0_75_db(measured):
    gains = {fw: r.gain for fw, r in measured.items()}
    assert all(gain > 0 for gain in gains.values()), gains
    assert abs(gains["jax"] - gains["torch"]) <= 0.75, gains
