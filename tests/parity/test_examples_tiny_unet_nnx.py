"""The NNX port of the second worked example (parity/examples/tiny_unet/nnx_model.py): end to end
against the torch model with weights converted by the converter's rules, at the forward
tolerance; two classic NNX-default defects put into it fail the same check."""

import jax
import numpy as np
import pytest
import torch

from parity.examples.tiny_unet import nnx_model, torch_model
from parity.engine.tolerance import FORWARD_ATOL, measure
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
        result = measure(a, b, FORWARD_ATOL)
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
    assert not (measure(got[0], feature_map).passed and measure(got[1], logits).passed)


# ---- checked by the engine like the Linen port (tests/parity/test_examples_tiny_unet.py) ----
@pytest.fixture(scope="module")
def engine_port():
    from parity import prepare_port

    port = nnx_model.build(seed=3)
    port.eval()
    return prepare_port(torch_model.build(), port, X)


def test_the_engine_passes_every_module_of_the_nnx_port_under_torch_names(engine_port):
    report = engine_port.compare()
    assert report.passed, report.failures[:3]
    compared = {r.name: r.flax_name for r in report.compared}
    for name in ("stem.0", "stem.1", "stem.2", "bottleneck.down", "bottleneck.norm",
                 "bottleneck.depthwise", "bottleneck.prelu", "up", "upsample", "fuse",
                 "head.1", "prediction[0]", "prediction[1]"):
        assert compared.get(name) == name, name     # NNX paths read like torch names
    assert report.worst.rel_to_scale <= FORWARD_ATOL


def test_every_applicable_mutant_is_caught_at_its_site_in_the_nnx_port(engine_port):
    from parity import CATALOGUE, run_zoo
    from parity.zoo.mutation import CAUGHT, NOT_APPLICABLE
    from parity.zoo.real_model_defects import DEFECTS as REAL_MODEL_DEFECTS

    zoo = run_zoo(engine_port)
    applicable = [r for r in zoo.results if r.status != NOT_APPLICABLE]
    assert all(r.status == CAUGHT for r in applicable), \
        [(r.defect, r.site, r.status, r.note) for r in applicable if r.status != CAUGHT]
    # the entries for real models (attention, pooling, padding, tokens, training) have no
    # site in this example
    assert {r.defect for r in applicable} == \
        set(CATALOGUE) - {"leaky-relu-default-slope", "layernorm-eps"} - set(REAL_MODEL_DEFECTS)
    by_site = {(r.defect, r.site): r.first_divergence for r in applicable}
    assert by_site[("batchnorm-batch-stats", "stem.1")] == "stem.1"
    assert by_site[("same-padding-strided", "bottleneck.down")] == "bottleneck.down"
    assert by_site[("conv-transpose-unflipped", "up")] == "up"
    assert by_site[("groupnorm-eps", "bottleneck.norm")] == "bottleneck.norm"
    assert by_site[("upsample-method", "upsample: resize call 1")] == "upsample"


def test_gradient_parity_of_the_nnx_port_per_torch_parameter(engine_port):
    from parity import gradient_parity

    grads = gradient_parity(engine_port.torch_model, engine_port.flax_model,
                            engine_port.variables, X, plan=engine_port.plan)
    assert len(grads.rows) == sum(1 for _ in engine_port.torch_model.parameters())
    assert grads.passed, grads.summary()
