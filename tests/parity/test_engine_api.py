"""The engine on small models of its own: every module captured, one-sided rows kept,
planted defects named at their module, output pytrees, 3-D layouts, the final output
always judged, meaningless runs refused."""

import numpy as np
import pytest
import torch
from torch import nn

from parity import compare, convert_weights
from parity.engine.api import NothingCompared
from parity.engine.rows import MISSING, ONLY_FLAX, ONLY_TORCH


class TorchNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        self.down = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        y = self.down(self.act(self.bn(self.conv(x))))
        return y, self.head(y.mean(dim=(2, 3)))


def flax_net(bn_eps=1e-5, extra=False):
    import flax.linen as fnn

    class FlaxNet(fnn.Module):
        def setup(self):
            self.conv = fnn.Conv(4, (3, 3), padding=((1, 1), (1, 1)))
            self.bn = fnn.BatchNorm(use_running_average=True, epsilon=bn_eps)
            self.down = fnn.Conv(6, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
            self.head = fnn.Dense(2)
            if extra:
                self.helper = fnn.Dense(6)

        def __call__(self, x):
            y = self.down(fnn.relu(self.bn(self.conv(x))))
            if extra:
                self.helper(y.mean(axis=(1, 2)))
            return y, self.head(y.mean(axis=(1, 2)))

    return FlaxNet()


@pytest.fixture(scope="module")
def torch_net():
    torch.manual_seed(0)
    model = TorchNet().eval()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.01, 0.05)  # small: a wrong epsilon is visible
    return model


X = np.random.default_rng(0).random((2, 3, 8, 10), dtype=np.float32)


def test_a_correct_port_passes_with_every_module_a_row(torch_net):
    port = flax_net()
    report = compare(torch_net, port, convert_weights(torch_net, port, X), X)
    assert report.passed, report.failures
    rows = {r.name: r for r in report.rows}
    assert rows["act"].status == ONLY_TORCH      # nn.ReLU is a function call in Flax
    assert {"conv", "bn", "down", "head", "prediction[0]", "prediction[1]"} <= \
        {r.name for r in report.compared}
    assert rows["prediction[0]"].torch_shape == (2, 4, 5, 6)  # NCHW moved to NHWC


def test_a_planted_batchnorm_epsilon_is_named_at_the_batchnorm(torch_net):
    wrong = flax_net(bn_eps=1e-3)
    report = compare(torch_net, wrong, convert_weights(torch_net, wrong, X), X)
    assert report.first_divergence_module == "bn", report.failures[:2]
    # named twice: by the hyperparameter diff, and by the numbers
    assert [r.status for r in report.failures[:2]] == ["hyperparameter mismatch", "fail"]


def test_modules_on_the_flax_side_only_are_rows_too(torch_net):
    port = flax_net(extra=True)
    variables = convert_weights(torch_net, flax_net(), X)
    import jax

    helper = port.init(jax.random.PRNGKey(0), np.moveaxis(X, 1, -1))["params"]["helper"]
    variables["params"]["helper"] = helper
    report = compare(torch_net, port, variables, X)
    assert [r.name for r in report.rows if r.status == ONLY_FLAX] == ["helper"]
    assert report.passed


def test_an_output_on_one_side_only_fails_and_nothing_compared_is_an_error(torch_net):
    import flax.linen as fnn

    class Single(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            return fnn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), name="conv")(x)

    import jax

    x = np.moveaxis(X, 1, -1)
    # torch returns a pair, Flax one array: the leaves without a counterpart fail
    report = compare(torch_net, Single(), Single().init(jax.random.PRNGKey(0), x), X)
    statuses = {r.name: r.status for r in report.rows if r.module == "" or r.name.startswith(
        "prediction")}
    assert not report.passed and statuses["prediction[0]"] == MISSING, statuses
    class ArgMax(nn.Module):           # integer outputs: nothing to compare
        def forward(self, x):
            return x.argmax(dim=1)

    class FlaxArgMax(fnn.Module):
        def __call__(self, x):
            return x.argmax(axis=-1)

    with pytest.raises(NothingCompared):
        compare(ArgMax(), FlaxArgMax(), {}, X)


def test_conv1d_outputs_are_compared_channels_last():
    import flax.linen as fnn

    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.GELU())

    class Port(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            return fnn.gelu(fnn.Conv(3, (3,), padding=((1, 1),), name="layers_0")(x),
                            approximate=False)

    x = np.random.default_rng(2).random((2, 2, 9), dtype=np.float32)
    report = compare(model, Port(), convert_weights(model, Port(), x), x,
                     mapping={"0": "layers_0"})
    assert report.passed and {"0", "prediction"} <= {r.name for r in report.compared}


def flax_subclass(post):
    """A subclass of a correct port whose root `__call__` post-processes super().__call__."""
    base = type(flax_net())

    class PostProcessed(base):
        def __call__(self, x):
            y, logits = super().__call__(x)
            return post(y), logits

    return PostProcessed()


@pytest.mark.parametrize("post", [lambda y: 2 * y, lambda y: y.at[0, 0, 0, 0].set(np.nan)],
                         ids=["doubled", "nan"])
def test_the_outermost_call_of_the_root_is_the_prediction(torch_net, post):
    port = flax_subclass(post)
    report = compare(torch_net, port, convert_weights(torch_net, flax_net(), X), X)
    failing = [r.name for r in report.failures]
    assert failing == ["prediction[0]"], [(r.name, r.status) for r in report.rows][-4:]
    correct = compare(torch_net, flax_subclass(lambda y: y),
                      convert_weights(torch_net, flax_net(), X), X)
    assert correct.passed and {r.status for r in correct.rows} <= {"pass", ONLY_TORCH}
