"""Ports written the way outside porters write them (Flax's automatic names, lists that
leave out torch's activations, activations held as attributes, NNX paths in a mapping):
each correct port passes and each planted defect fails at (or inside) its module. Each
test here once gave a wrong verdict."""

from __future__ import annotations

import functools

import flax.linen as fnn
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from parity import prepare_port, run_zoo
from parity.engine.rows import HYPERPARAMETER
from parity.zoo.mutation import CAUGHT, EQUIVALENT

X = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
TOKENS = np.random.default_rng(1).random((1, 3, 8), dtype=np.float32)


def _torch(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    return module.eval()


# ---- ReLU6 ported as relu: the clip at 6 is never reached by [0, 1) inputs -----------
class ConvReLU6(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1),
                                         torch.nn.ReLU6(inplace=True))
        self.head = torch.nn.Conv2d(4, 2, 1)
        self.act = torch.nn.ReLU()

    def forward(self, x):
        return self.act(self.head(self.block(x)))


class ConvReLU6Linen(fnn.Module):
    relu6: bool = True

    @fnn.compact
    def __call__(self, x):
        x = fnn.Conv(4, (3, 3), padding=1)(x)
        x = fnn.relu6(x) if self.relu6 else fnn.relu(x)
        return fnn.relu(fnn.Conv(2, (1, 1))(x))


class ConvReLU6NNX(nnx.Module):
    """The activation bound when the port is built, as NNX ports often do."""

    def __init__(self, relu6: bool, rngs: nnx.Rngs):
        self.block = nnx.List([nnx.Conv(3, 4, (3, 3), padding=1, rngs=rngs),
                               nnx.relu6 if relu6 else nnx.relu])
        self.head = nnx.Conv(4, 2, (1, 1), rngs=rngs)
        self.act = nnx.relu

    def __call__(self, x):
        return self.act(self.head(self.block[1](self.block[0](x))))


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_relu_where_torch_has_relu6_fails_at_the_activation_though_the_numbers_agree(kind):
    def port(relu6):
        return ConvReLU6Linen(relu6) if kind == "linen" else ConvReLU6NNX(relu6, nnx.Rngs(0))

    model = _torch(ConvReLU6())
    assert prepare_port(model, port(True), X).compare().passed
    report = prepare_port(model, port(False), X).compare()
    first = report.failures[0]
    assert (first.module, first.status) == ("block.1", HYPERPARAMETER)
    assert "ReLU6" in first.flax_name and "relu" in first.flax_name
    # the numbers alone agree: no activation reached 6
    assert all(r.status == HYPERPARAMETER for r in report.failures)


# ---- GELU held by an nnx.Sequential / a Linen field: read by the diff ----------------
class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(),
                                       torch.nn.Linear(8, 8))

    def forward(self, x):
        return self.mlp(x)


class MlpLinen(fnn.Module):
    act: object = functools.partial(fnn.gelu, approximate=False)

    @fnn.compact
    def __call__(self, x):
        return fnn.Dense(8, name="mlp_2")(self.act(fnn.Dense(8, name="mlp_0")(x)))


class MlpNNX(nnx.Module):
    def __init__(self, act):
        rngs = nnx.Rngs(0)
        self.mlp = nnx.Sequential(nnx.Linear(8, 8, rngs=rngs), act,
                                  nnx.Linear(8, 8, rngs=rngs))

    def __call__(self, x):
        return self.mlp(x)


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_a_tanh_gelu_held_as_an_attribute_is_named_by_the_diff(kind):
    exact = functools.partial(fnn.gelu, approximate=False)

    def port(act):
        return MlpLinen(act) if kind == "linen" else MlpNNX(act)

    model = _torch(Mlp())
    assert prepare_port(model, port(exact), TOKENS, input_layout="as-is").compare().passed
    report = prepare_port(model, port(fnn.gelu), TOKENS, input_layout="as-is").compare()
    first = report.failures[0]
    assert (first.module, first.status) == ("mlp.1", HYPERPARAMETER)
    assert "GELU approximation" in first.name


# ---- a Linen list without torch's ReLUs: numbered 0, 1, 2 for torch's 0, 2, 4 --------
class Features(torch.nn.Module):
    def __init__(self, widths=(4, 4, 4)):
        super().__init__()
        a, b, c = widths
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, a, 3, padding=1), torch.nn.ReLU(inplace=True),
            torch.nn.Conv2d(a, b, 3, padding=1), torch.nn.ReLU(inplace=True),
            torch.nn.Conv2d(b, c, 3, padding=1))
        self.classifier = torch.nn.Sequential(torch.nn.Linear(c * 4, 6), torch.nn.ReLU(),
                                              torch.nn.Dropout(), torch.nn.Linear(6, 2))

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(self.features(x), 4)
        return self.classifier(torch.flatten(x, 1))


class FeaturesLinen(fnn.Module):
    widths: tuple = (4, 4, 4)
    torch_flatten: bool = True

    def setup(self):
        self.features = [fnn.Conv(w, (3, 3), padding=1) for w in self.widths]
        self.classifier = [fnn.Dense(6), fnn.Dense(2)]

    def __call__(self, x):
        x = fnn.relu(self.features[0](x))
        x = fnn.relu(self.features[1](x))
        x = fnn.max_pool(self.features[2](x), (4, 4), (4, 4))
        if self.torch_flatten:
            x = x.transpose(0, 3, 1, 2)     # flatten as torch does: C, H, W
        x = fnn.relu(self.classifier[0](x.reshape(x.shape[0], -1)))
        return self.classifier[1](x)


@pytest.mark.parametrize("widths", [(4, 4, 4), (4, 5, 6)], ids=["same-widths", "widths"])
def test_a_linen_list_leaving_out_torchs_relus_passes_and_pairs_by_position(widths):
    model = _torch(Features(widths))
    port = prepare_port(model, FeaturesLinen(widths), X)
    report = port.compare()
    assert report.passed, report.failures[:2]
    assert port.mapping["features.2"] == "features_1"
    assert port.mapping["features.4"] == "features_2"
    assert port.mapping["classifier.3"] == "classifier_1"
    # torch's ReLU features.1 is not compared with the port's second conv
    assert {r.name: r.flax_name for r in report.rows}["features.1"] is None


def test_a_flatten_in_nhwc_order_before_the_classifier_fails_at_the_classifier():
    model = _torch(Features())
    report = prepare_port(model, FeaturesLinen(torch_flatten=False), X).compare()
    assert report.first_divergence == "classifier.0"


# ---- a mapping to an NNX port's dotted path ----------------------------------------
class TwoConvs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1 = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1))
        self.head = torch.nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.layer1(x))


class TwoConvsNNX(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.stem = nnx.List([nnx.Conv(3, 4, (3, 3), padding=1, rngs=rngs)])
        self.head = nnx.Conv(4, 2, (1, 1), rngs=rngs)

    def __call__(self, x):
        return self.head(self.stem[0](x))


def test_a_mapping_to_an_nnx_dotted_path_is_taken_as_spelled():
    port = prepare_port(_torch(TwoConvs()), TwoConvsNNX(nnx.Rngs(0)), X,
                        mapping={"layer1.0": "stem.0"})
    report = port.compare()
    assert report.passed and port.mapping["layer1.0"] == "stem.0"
    assert {r.name: r.flax_name for r in report.rows}["layer1.0"] == "stem.0"


# ---- padding_mode="reflect" ported as jnp.pad(mode="reflect") + a VALID conv ----------
class ReflectConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")

    def forward(self, x):
        return self.conv(x)


class ReflectConvLinen(fnn.Module):
    mode: str = "reflect"
    padding: object = "VALID"

    @fnn.compact
    def __call__(self, x):
        if self.padding == "VALID":
            x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode=self.mode)
        return fnn.Conv(4, (3, 3), padding=self.padding, name="conv")(x)


def test_a_reflect_conv_padded_by_the_port_itself_passes_and_a_zero_pad_fails_at_it():
    model = _torch(ReflectConv())
    assert prepare_port(model, ReflectConvLinen(), X).compare().passed
    for wrong in (ReflectConvLinen(mode="constant"), ReflectConvLinen(padding=1)):
        report = prepare_port(model, wrong, X).compare()
        assert report.first_divergence_module == "conv"


# ---- the zoo's pool-padding mutant where 'SAME' pads nothing --------------------------
class ConvPool(torch.nn.Module):
    def __init__(self, kernel: int, padding: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(kernel, 2, padding)

    def forward(self, x):
        return self.pool(self.conv(x))


class ConvPoolLinen(fnn.Module):
    kernel: int
    padding: int

    @fnn.compact
    def __call__(self, x):
        pads = ((self.padding, self.padding),) * 2
        return fnn.max_pool(fnn.Conv(4, (3, 3), padding=1, name="conv")(x),
                            (self.kernel,) * 2, (2, 2), padding=pads)


@pytest.mark.parametrize("kernel,padding,status", [(2, 0, EQUIVALENT), (3, 1, CAUGHT)])
def test_pool_padding_mutant_is_equivalent_only_where_same_pads_nothing_read(kernel, padding,
                                                                           status):
    model = _torch(ConvPool(kernel, padding))
    zoo = run_zoo(prepare_port(model, ConvPoolLinen(kernel, padding), X),
                  names=["pool-padding"])
    assert [r.status for r in zoo.results] == [status]


# ---- a mutant at a torch-only activation inside a torch container the port lacks ------
class Head(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.classifier = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Hardswish(),
                                              torch.nn.Linear(6, 2))

    def forward(self, x):
        return self.classifier(self.conv(x).mean(dim=(2, 3)))


class HeadLinen(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        x = fnn.Conv(4, (3, 3), padding=1)(x).mean(axis=(1, 2))
        return fnn.Dense(2)(fnn.hard_swish(fnn.Dense(6)(x)))


def test_a_mutant_at_an_activation_without_a_row_is_caught_as_the_named_suspect():
    port = prepare_port(_torch(Head()), HeadLinen(), X)
    zoo = run_zoo(port, names=["hard-activation-smooth"])
    assert [(r.status, r.first_divergence) for r in zoo.results] == \
        [(CAUGHT, "classifier.2")]


# ---- a row whose values are all tiny: the absolute rule alone passed anything ----------
def test_a_wrong_row_far_below_the_absolute_floor_fails_and_a_right_one_passes():
    from parity.engine.rows import judge

    reference = np.random.default_rng(2).random((2, 8), dtype=np.float32) * 5e-7
    assert judge("fc", reference, reference[:, ::-1].copy(), 1e-5).status == "fail"
    assert judge("fc", reference, reference * np.float32(1 + 1e-6), 1e-5).status == "pass"
    # rounding residue below one float32 ulp of 1.0 is not judged relative to itself
    noise = reference * 1e-2
    assert judge("fc", noise, noise[:, ::-1].copy(), 1e-5).status == "pass"


def test_an_nhwc_flatten_into_a_layer_of_tiny_outputs_fails_at_that_layer():
    model = _torch(Features())
    with torch.no_grad():      # a head initialised near zero: its outputs are ~1e-6
        model.classifier[0].weight.mul_(3e-6)
        model.classifier[0].bias.zero_()
    assert prepare_port(model, FeaturesLinen(), X).compare().passed
    report = prepare_port(model, FeaturesLinen(torch_flatten=False), X).compare()
    assert report.first_divergence == "classifier.0"
    assert report.failures[0].rel_to_scale <= report.tol   # the absolute rule alone passed


# ---- TF-style 'SAME': timm's Conv2dSame (pads in forward), nn.ZeroPad2d + VALID conv ----
class Conv2dSame(torch.nn.Conv2d):
    """As timm's: TF 'SAME' pads computed from each input in forward, padding=0."""

    def forward(self, x):
        size, k, s = x.shape[-1], self.kernel_size[0], self.stride[0]
        total = max((-(-size // s) - 1) * s + k - size, 0)
        x = torch.nn.functional.pad(x, [total // 2, total - total // 2] * 2)
        return torch.nn.functional.conv2d(x, self.weight, self.bias, self.stride)


class TFSame(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_stem = Conv2dSame(3, 4, 3, stride=2, bias=False)
        self.pad = torch.nn.ZeroPad2d((0, 1, 0, 1))
        self.conv2 = torch.nn.Conv2d(4, 4, 3, stride=2)

    def forward(self, x):
        return self.conv2(self.pad(self.conv_stem(x)))


class TFSameLinen(fnn.Module):
    stem_padding: object = "SAME"

    @fnn.compact
    def __call__(self, x):
        x = fnn.Conv(4, (3, 3), 2, padding=self.stem_padding, use_bias=False,
                     name="conv_stem")(x)
        return fnn.Conv(4, (3, 3), 2, padding="SAME", name="conv2")(x)


def test_tf_same_padding_ported_as_flax_same_passes_and_torchs_1_1_pads_fail_at_the_stem():
    model = _torch(TFSame())
    report = prepare_port(model, TFSameLinen(), X).compare()
    assert report.passed, report.failures[:2]
    report = prepare_port(model, TFSameLinen(stem_padding=1), X).compare()
    assert report.first_divergence == "conv_stem"
