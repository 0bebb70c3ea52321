"""Converter rules per torch module kind: layouts checked by running both frameworks'
layers on the same converted weights, strict lists, refusal by name, DLN's table."""

import numpy as np
import pytest
import torch
from torch import nn

from core.errors import UserError
from parity import convert_weights
from parity.engine.frontend import frontend_for
from parity.engine.tolerance import FORWARD_ATOL, assert_close
from weights.rules import ConversionMismatch, NoConverterRule, plan_conversion, to_flax, to_torch


def _run_flax(module, variables, x_nchw):
    import jax.numpy as jnp

    x = np.moveaxis(x_nchw, 1, -1) if x_nchw.ndim > 2 else x_nchw
    out = np.asarray(module.apply(variables, jnp.asarray(x)))
    return np.moveaxis(out, -1, 1) if out.ndim > 2 else out


def _torch_out(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("case", ["conv2d", "grouped", "depthwise", "conv1d", "conv3d"])
def test_conv_rule_gives_the_same_outputs_for_every_conv_kind(case):
    import flax.linen as fnn

    torch.manual_seed(0)
    spec = {"conv2d": (2, 3, 5, 1, (7, 6)), "grouped": (2, 4, 6, 2, (7, 6)),
            "depthwise": (2, 4, 4, 4, (7, 6)), "conv1d": (1, 3, 5, 1, (9,)),
            "conv3d": (3, 2, 3, 1, (5, 4, 3))}[case]
    dims, cin, cout, groups, size = spec
    conv = [nn.Conv1d, nn.Conv2d, nn.Conv3d][dims - 1](cin, cout, 3, padding=1, groups=groups)
    flax_conv = fnn.Conv(cout, (3,) * dims, padding=[(1, 1)] * dims, feature_group_count=groups)
    x = np.random.default_rng(1).random((2, cin, *size), dtype=np.float32)
    variables = convert_weights(conv, flax_conv, x)
    assert_close(_run_flax(flax_conv, variables, x), _torch_out(conv, x), FORWARD_ATOL, case)


@pytest.mark.parametrize("transpose_kernel", [False, True])
def test_conv_transpose_rule_reads_the_flax_modules_convention(transpose_kernel):
    import flax.linen as fnn

    torch.manual_seed(2)
    up = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1)
    flax_up = fnn.ConvTranspose(4, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)),
                                transpose_kernel=transpose_kernel)
    x = np.random.default_rng(3).random((2, 3, 5, 6), dtype=np.float32)
    variables = convert_weights(up, flax_up, x)
    assert_close(_run_flax(flax_up, variables, x), _torch_out(up, x), FORWARD_ATOL)


def test_norms_prelu_linear_and_embedding_rules():
    import flax.linen as fnn
    import jax.numpy as jnp

    torch.manual_seed(4)
    bn = nn.BatchNorm1d(6).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    plan = plan_conversion(bn)
    assert plan.dropped == ["num_batches_tracked"]
    assert {(r.collection, r.leaf) for r in plan.rules} == {
        ("params", "scale"), ("params", "bias"), ("batch_stats", "mean"), ("batch_stats", "var")}
    x = np.random.default_rng(5).random((4, 6), dtype=np.float32)
    flax_bn = fnn.BatchNorm(use_running_average=True, epsilon=1e-5)
    assert_close(_run_flax(flax_bn, convert_weights(bn, flax_bn, x), x), _torch_out(bn, x))
    prelu = nn.PReLU(6)
    prelu.weight.data.uniform_(0.05, 0.5)
    assert to_flax("prelu", prelu.weight.detach().numpy()).shape == (6,)
    assert to_flax("prelu", np.array([0.3], np.float32)).shape == ()
    emb = nn.Embedding(7, 3)
    flax_emb = fnn.Embed(7, 3)
    ids = np.array([[0, 6, 2]])
    (rule,) = plan_conversion(emb).rules
    assert (rule.collection, rule.leaf) == ("params", "embedding")
    got = flax_emb.apply({"params": {"embedding": to_flax(rule.kind, emb.weight.detach().numpy())}},
                         jnp.asarray(ids))
    np.testing.assert_array_equal(np.asarray(got), emb(torch.from_numpy(ids)).detach().numpy())
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(to_torch("dense", to_flax("dense", w)), w)


def test_a_module_kind_with_tensors_and_no_rule_is_refused_by_name():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LSTM(4, 4))
    with pytest.raises(NoConverterRule, match=r"'1' of kind LSTM \(tensors: bias_hh_l0 \(16,\)") as info:
        plan_conversion(model)
    assert isinstance(info.value, UserError)
    assert plan_conversion(nn.Sequential(nn.ReLU(), nn.Flatten())).rules == []


def test_strict_conversion_lists_missing_unexpected_and_misshapen_sorted():
    import flax.linen as fnn

    class Port(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            x = fnn.Conv(5, (3, 3), name="b")(x)     # torch has 4 channels here
            return fnn.Dense(2, name="z")(x.reshape(x.shape[0], -1))

    model = nn.Sequential()
    model.add_module("b", nn.Conv2d(3, 4, 3, padding=1))
    model.add_module("a", nn.Conv2d(4, 4, 1))
    x = np.zeros((1, 3, 4, 4), np.float32)
    with pytest.raises(ConversionMismatch) as info:
        convert_weights(model, Port(), x)
    text = str(info.value)
    assert "missing: params/z/bias, params/z/kernel" in text
    assert "unexpected: params/a/bias, params/a/kernel" in text
    assert "wrong shape: params/b/bias" in text and text.index("params/b/bias") < \
        text.index("params/b/kernel")


def test_dln_tensor_table_is_what_the_rules_give_for_dln():
    from core.config import DLNConfig
    from reference_torch.model import DLN
    from weights.spec import tensor_specs

    cfg = DLNConfig(dim=16)
    got = [(r.torch_name, r.flax_name, r.kind, r.torch_shape) for r in
           plan_conversion(DLN(cfg)).rules]
    assert got == [(s.torch_name, s.flax_name, s.kind, s.torch_shape) for s in tensor_specs(cfg)]
    assert len(got) == 125


def test_census_sees_variables_and_modules_without_computing():
    import flax.linen as fnn

    census = frontend_for(fnn.Conv(4, (3, 3))).census(np.zeros((1, 3, 8, 8), np.float32))
    assert census.shapes == {"params/kernel": (3, 3, 3, 4), "params/bias": (4,)}
    assert "" in census.modules


@pytest.mark.parametrize("kind", ["conv", "conv_transpose", "conv_transpose_flip", "dense",
                                  "prelu", "bias", "scale", "mean", "var", "embedding"])
def test_flax_shape_by_arithmetic_equals_the_shape_the_layout_rule_gives(kind):
    from weights.rules import flax_shape, to_flax

    shapes = {"conv": [(5, 3, 2, 4), (5, 3, 7), (6, 2, 1, 3, 2)], "dense": [(5, 3)],
              "prelu": [(1,), (7,)]}
    for shape in shapes.get(kind, shapes["conv"]) + ([(9,)] if kind not in (
            "conv", "conv_transpose", "conv_transpose_flip", "dense") else []):
        value = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
        assert flax_shape(kind, shape) == to_flax(kind, value).shape, (kind, shape)


def test_the_tensor_table_of_the_widest_dln_is_sized_without_allocating():
    """Shapes a checkpoint's metadata implies are compared before any allocation: the
    Flax shapes of a dim-1024 DLN (177 million values, 0.66 GiB) cost no array."""
    import tracemalloc

    from core.config import MAX_DIM, DLNConfig
    from weights.spec import tensor_specs

    tracemalloc.start()
    try:
        shapes = [s.flax_shape for s in tensor_specs(DLNConfig(dim=MAX_DIM))]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert shapes[0] == (3, 3, 4, 2 * MAX_DIM)
    assert peak < 4 << 20, f"{peak / 2**20:.1f} MiB traced while sizing the table"
