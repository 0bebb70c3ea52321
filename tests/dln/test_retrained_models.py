"""The CPU-trained pair of Table 2 (weights/retrained_jax, weights/retrained_torch: one
recipe, one seed, one initialisation, trained with `dln train --framework jax` and
`--framework torch`) does what its model cards say, re-checked with the JAX port on CPU:
each image's PSNR as tabled in the card (to 0.01 dB), on the built-in held-out pairs and
on a photo no run trains on; the two training frameworks within 0.75 dB of each other on
the held-out pairs and within 1 dB on the unseen photo, each gaining at least 8 dB there."""

from __future__ import annotations

import re

import pytest

from core.paths import package_folder

WEIGHTS = package_folder("weights")
MODELS = {"jax": WEIGHTS / "retrained_jax" / "dln_retrained_jax.pth",
          "torch": WEIGHTS / "retrained_torch" / "dln_retrained_torch.pth"}
TABLE_HEAD = "| image | low-light | enhanced |"
# a row of a model card's table: | image | low-light | enhanced |
ROW = re.compile(r"^\| ([\w-]+) \| ([0-9.]+) dB \| ([0-9.]+) dB", re.MULTILINE)


def card_tables(checkpoint) -> list[dict[str, tuple[float, float]]]:
    """The card's tables in order (held-out pairs, then the unseen photo)."""
    text = (checkpoint.parent / "README.md").read_text()
    tables = []
    for block in text.split(TABLE_HEAD)[1:]:
        body = block.split("\n\n")[0]
        tables.append({name: (float(low), float(enhanced))
                       for name, low, enhanced in ROW.findall(body)})
    return tables


@pytest.fixture(scope="module")
def measured():
    from core.data import unseen_pairs
    from dln.heldout import evaluate_checkpoint

    return {fw: (evaluate_checkpoint(str(path), backend="jax"),
                 evaluate_checkpoint(str(path), unseen_pairs(), backend="jax"))
            for fw, path in MODELS.items()}


def _matches_card(result, card):
    assert set(card) == set(result.names) | {"mean"}, sorted(card)
    for name, low, enhanced in zip(result.names, result.psnr_low, result.psnr_enhanced):
        assert card[name][0] == pytest.approx(low, abs=0.01), name
        assert card[name][1] == pytest.approx(enhanced, abs=0.01), name
    assert card["mean"][0] == pytest.approx(result.mean_low, abs=0.01)
    assert card["mean"][1] == pytest.approx(result.mean_enhanced, abs=0.01)


@pytest.mark.parametrize("framework", sorted(MODELS))
def test_heldout_and_unseen_psnr_per_image_are_the_model_cards(measured, framework):
    tables = card_tables(MODELS[framework])
    assert len(tables) == 2, f"{len(tables)} tables in the card"
    for result, card in zip(measured[framework], tables):
        _matches_card(result, card)


def test_the_training_framework_moves_psnr_by_at_most_0_75_db_heldout_1_db_unseen(measured):
    heldout = {fw: r[0].gain for fw, r in measured.items()}
    unseen = {fw: r[1].gain for fw, r in measured.items()}
    assert all(gain > 0 for gain in heldout.values()), heldout
    assert abs(heldout["jax"] - heldout["torch"]) <= 0.75, heldout
    assert all(gain >= 8.0 for gain in unseen.values()), unseen
    assert abs(unseen["jax"] - unseen["torch"]) <= 1.0, unseen
