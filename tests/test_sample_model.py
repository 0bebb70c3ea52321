"""The committed sample model does what the README says it does."""

import pytest

from core.paths import SAMPLE_CHECKPOINT


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_sample_model_raises_heldout_psnr_by_at_least_5_db(backend):
    from dln.heldout import evaluate_checkpoint

    result = evaluate_checkpoint(str(SAMPLE_CHECKPOINT), backend=backend)
    # the floor of issue 6; the model card reports +12.28 dB
    assert result.gain >= 5.0, result.text()


def test_sample_model_is_the_full_width_authors_layout_network():
    import torch

    from weights.convert import load_checkpoint

    raw = torch.load(SAMPLE_CHECKPOINT, weights_only=True)
    assert all(k.startswith("module.") for k in raw) and len(raw) == 125
    ckpt = load_checkpoint(SAMPLE_CHECKPOINT)
    assert ckpt.parameter_count == 700_586 and ckpt.config.dim == 64
