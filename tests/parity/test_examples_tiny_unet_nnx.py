"""The NNX port of the second worked example (examples/tiny_unet/nnx_model.py): end to end
against the torch model with weights converted by the converter's rules, at the forward
tolerance; two classic NNX-default defects put into it fail the same check."""

import jax
import numpy as np
import pytest
import torch

from examples.tiny_unet import nnx_model, torch_model
from parity.engine.tolerance import FORWARD_ATOL, compare
from weights.nnx_state import torch_module_to_nnx

X = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)


@pytest.fixture(scope="module")
def pair():
    reference = torch_model.build()
    with torch.no_grad():
        feature_map, logits = reference(torch.from_numpy(X))
    port = nnx_model.build(seed=3)
    torch_module_to_nnx(reference, port)
    return port, feature_map.numpy().transpose(0, 2, 3, 1), logits.numpy()


def _run(port):
    with jax.default_matmul_precision("highest"):
        feature_map, logits = port(X.transpose(0, 2, 3, 1))
    return np.asarray(feature_map), np.asarray(logits)


def test_nnx_tiny_unet_matches_torch_end_to_end_with_converted_weights(pair):
    port, feature_map, logits = pair
    got = _run(port)
    for name, a, b in (("feature map", got[0], feature_map), ("logits", got[1], logits)):
        result = compare(a, b, FORWARD_ATOL)
        assert result.passed, f"{name}: {result.describe()}"
    assert np.abs(logits).max() > 0.05 and np.abs(feature_map).max() > 0.05


@pytest.mark.parametrize("defect", ["groupnorm-default-eps", "same-padding-strided"])
def test_an_nnx_default_left_in_the_port_fails_the_end_to_end_check(pair, defect):
    from flax import nnx

    port, feature_map, logits = pair
    mutant = nnx.clone(port)
    if defect == "groupnorm-default-eps":
        mutant.bottleneck.norm.epsilon = 1e-6  # NNX's GroupNorm default, torch has 1e-5
    else:
        mutant.bottleneck.down.padding = "SAME"  # pads (0, 1) where torch pads (1, 1)
    got = _run(mutant)
    assert not (compare(got[0], feature_map).passed and compare(got[1], logits).passed)
