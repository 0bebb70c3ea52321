"""The engine's NNX frontend (parity/engine/nnx.py): ordered capture with dotted paths,
subclasses that inherit __call__, no call logged twice, patches restored, jit and eager
alike, strict conversion into NNX variables, and any port of an unknown kind refused."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

from parity import compare, convert_weights
from parity.engine.frontend import UnsupportedPort, frontend_for
from parity.engine.nnx import NNXFrontend
from weights.rules import ConversionMismatch

X = np.random.default_rng(1).random((2, 3, 6, 7), dtype=np.float32)


class Scaled(nnx.Conv):
    """A subclass inheriting nnx.Conv's __call__."""


class Doubling(nnx.Conv):
    """A subclass with its own __call__ calling super().__call__ (one module, one call)."""

    def __call__(self, x):
        return 2.0 * super().__call__(x)


class Port(nnx.Module):
    def __init__(self, rngs):
        self.first = Scaled(3, 4, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
        self.blocks = nnx.List([Doubling(4, 4, (1, 1), rngs=rngs),
                                nnx.Sequential(nnx.Linear(4, 4, rngs=rngs))])

    def __call__(self, x):
        y = self.blocks[0](self.first(x))
        return self.blocks[1](self.blocks[1](y))    # one module called twice


class Conv2d(nn.Conv2d):
    """torch's side of Doubling (named Conv2d: the converter picks rules by kind name)."""

    def forward(self, x):
        return 2.0 * super().forward(x)


class Torch(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.ModuleList([Conv2d(4, 4, 1), nn.Sequential(nn.Linear(4, 4))])

    def forward(self, x):
        y = self.blocks[0](self.first(x)).permute(0, 2, 3, 1)  # Linear on channels
        return self.blocks[1](self.blocks[1](y))


@pytest.fixture(scope="module")
def pair():
    reference = Torch().eval()
    port = Port(nnx.Rngs(0))
    return reference, port, convert_weights(reference, port, X)


def test_outputs_are_captured_in_finish_order_under_dotted_paths_once_per_call(pair):
    _, port, variables = pair
    frontend = frontend_for(port)
    assert isinstance(frontend, NNXFrontend)
    x = X.transpose(0, 2, 3, 1)
    for jit in (True, False):
        outputs = frontend.make_apply(jit=jit)(variables, x)
        assert list(outputs) == [("first", ""), ("blocks.0", ""), ("blocks.1.layers.0", ""),
                                 ("blocks.1", ""), ("blocks.1.layers.0", "#2"),
                                 ("blocks.1", "#2"), ("", "")], jit
    eager = frontend.make_apply(jit=False)(variables, x)
    jitted = frontend.make_apply()(variables, x)
    for key in eager:
        np.testing.assert_allclose(jitted[key], eager[key], rtol=1e-5, atol=1e-6)


def test_patched_calls_are_restored_even_when_the_port_raises():
    originals = {cls: vars(cls)["__call__"] for cls in (nnx.Conv, Doubling, nnx.Sequential)}

    class Broken(nnx.Module):
        def __init__(self):
            self.conv = Doubling(3, 4, (1, 1), rngs=nnx.Rngs(0))

        def __call__(self, x):
            self.conv(x)
            raise RuntimeError("port bug")

    frontend = frontend_for(Broken())
    with pytest.raises(RuntimeError, match="port bug"):
        frontend.make_apply(jit=False)(frontend.own_variables(), X.transpose(0, 2, 3, 1))
    assert {cls: vars(cls)["__call__"] for cls in originals} == originals


def test_the_converted_port_agrees_row_by_row_with_torch_names(pair):
    reference, port, variables = pair
    report = compare(reference, port, variables, X)
    assert report.passed, report.failures
    by_name = {r.name: r.flax_name for r in report.compared}
    assert by_name["blocks.1.0"] == "blocks.1.layers.0"     # nnx.Sequential adds layers.
    assert by_name["blocks.1.0#2"] == "blocks.1.layers.0#2"
    # blocks.0's own __call__ doubles the inherited one's output: its row holds the double
    assert by_name["blocks.0"] == "blocks.0" and by_name["prediction"] == "prediction"


def test_a_wrong_weight_is_found_at_its_module(pair):
    reference, port, variables = pair
    flat = NNXFrontend.flat(variables)
    flat["params/blocks.0/kernel"] = flat["params/blocks.0/kernel"] * 1.01
    report = compare(reference, port, NNXFrontend.nested(flat), X)
    assert report.first_divergence == "blocks.0"


def test_conversion_into_an_nnx_port_refuses_missing_unexpected_and_misshapen_sorted(pair):
    reference, _, _ = pair

    class Other(nnx.Module):
        def __init__(self, rngs):
            self.first = nnx.Conv(3, 5, (3, 3), rngs=rngs)      # 5 channels, not 4
            self.extra = nnx.Linear(2, 2, rngs=rngs)

        def __call__(self, x):
            return self.extra(self.first(x)[..., :2])

    with pytest.raises(ConversionMismatch) as err:
        convert_weights(reference, Other(nnx.Rngs(0)), X)
    message = str(err.value)
    assert "2 missing: params/extra/bias, params/extra/kernel" in message
    assert "unexpected: params/blocks.0/bias, params/blocks.0/kernel" in message
    assert "params/first/bias (4,) != expected (5,)" in message


def test_a_port_of_no_known_kind_is_refused_by_name():
    with pytest.raises(UnsupportedPort, match="not a flax.linen.Module or a flax.nnx.Module"):
        frontend_for(lambda x: x)


def test_the_frontend_leaves_the_port_it_reads_unchanged(pair):
    _, port, variables = pair
    before = np.array(port.first.kernel[...])
    frontend_for(port).make_apply()(variables, X.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(np.asarray(port.first.kernel[...]), before)
    assert not np.array_equal(before, NNXFrontend.flat(variables)["params/first/kernel"])
    assert jnp.asarray(port.first.kernel[...]).dtype == jnp.float32


def test_an_abstract_port_from_nnx_eval_shape_is_checked_on_the_converted_weights(pair):
    reference, _, _ = pair
    abstract = nnx.eval_shape(lambda: Port(nnx.Rngs(0)))    # no weight drawn
    report = compare(reference, abstract, convert_weights(reference, abstract, X), X)
    assert report.passed and len(report.compared) >= 6, report.failures
