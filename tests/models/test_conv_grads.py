"""The training rewrites compute the derivatives autodiff computes: port/conv_grads.py's
custom gradients against jax.vjp of the plain operations, and port/fast_training.py's
interceptor against the plain model.

Float32 on small seeded shapes: the forms differ from autodiff only by summation order
(relative errors ~1e-7), while a wrong formula (a flip, a transposition, a missing tap)
is off by O(1). The float64 check at 1e-6 per tensor against PyTorch is the gradient
parity (tests/parity/test_parity_gradients.py), which differentiates the model through
these rewrites, and 20 training steps against PyTorch are tests/parity/test_train_parity.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from parity.engine.tolerance import relative_l2

RTOL = 1e-5  # float32 summation order over <= a few thousand terms (seen <= 4e-7)


def _arrays(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def _plain_conv(x, kernel):
    from jax import lax

    from port.conv_grads import NHWC, same_padding

    return lax.conv_general_dilated(x, kernel, (1, 1), same_padding(kernel.shape),
                                    dimension_numbers=NHWC, precision="highest")


@pytest.mark.parametrize("cin,cout,k,form", [(4, 16, 3, "gather input"),
                                             (16, 3, 3, "place output"),
                                             (12, 10, 3, "xla"),
                                             (6, 9, 1, "gather input"),
                                             (3, 2, 5, "place output")])
def test_conv_same_gradients_equal_autodiff_in_every_kernel_gradient_form(cin, cout, k, form):
    import jax

    from port.conv_grads import conv_same, kernel_gradient_form

    assert kernel_gradient_form((k, k, cin, cout)) == form
    x, kernel, g = _arrays([(2, 9, 11, cin), (k, k, cin, cout), (2, 9, 11, cout)], seed=k)
    y, vjp = jax.vjp(lambda a, b: conv_same(a, b, "highest"), x, kernel)
    y_ref, vjp_ref = jax.vjp(_plain_conv, x, kernel)
    assert relative_l2(np.asarray(y), np.asarray(y_ref)) <= RTOL
    for got, ref, what in zip(vjp(g), vjp_ref(g), ("input", "kernel")):
        err = relative_l2(np.asarray(got), np.asarray(ref))
        assert err <= RTOL, f"{what} gradient ({form}) off by {err:.2e}"


@pytest.mark.parametrize("slope", [0.25, -0.4, 0.0])
def test_conv_bias_prelu_gradients_equal_autodiff_of_conv_bias_and_prelu(slope):
    import jax
    import jax.numpy as jnp

    from port.conv_grads import conv_bias_prelu

    x, kernel, bias, g = _arrays([(2, 8, 10, 5), (3, 3, 5, 7), (7,), (2, 8, 10, 7)], seed=3)
    a = jnp.float32(slope)

    def plain(x, kernel, bias, a):
        z = _plain_conv(x, kernel) + bias
        return jnp.where(z >= 0, z, a * z)

    def fast(x, kernel, bias, a):
        return conv_bias_prelu(x, kernel, bias, a, "highest")

    y, vjp = jax.vjp(fast, x, kernel, bias, a)
    y_ref, vjp_ref = jax.vjp(plain, x, kernel, bias, a)
    assert relative_l2(np.asarray(y), np.asarray(y_ref)) <= RTOL
    for got, ref, what in zip(vjp(g), vjp_ref(g), ("input", "kernel", "bias", "slope")):
        got, ref = np.asarray(got), np.asarray(ref)
        assert got.shape == ref.shape and got.dtype == ref.dtype, what
        err = abs(float(got - ref)) / max(1.0, abs(float(ref))) if got.ndim == 0 else \
            relative_l2(got, ref)
        assert err <= RTOL, f"{what} gradient off by {err:.2e} (slope {slope})"


def test_prelu_at_exactly_zero_takes_the_positive_branch_as_autodiff_does():
    import jax
    import jax.numpy as jnp

    from port.conv_grads import conv_bias_prelu

    x = jnp.zeros((1, 4, 4, 2), jnp.float32)  # pre-activation == bias == 0 everywhere
    kernel, g = _arrays([(3, 3, 2, 3), (1, 4, 4, 3)], seed=5)
    grads = jax.grad(lambda b, a: jnp.sum(conv_bias_prelu(x, kernel, b, a) * g),
                     argnums=(0, 1))(jnp.zeros(3, jnp.float32), jnp.float32(0.5))
    np.testing.assert_allclose(np.asarray(grads[0]), g.sum(axis=(0, 1, 2)), rtol=1e-6)
    assert float(grads[1]) == 0.0


def test_drop_in_conv_general_dilated_routes_only_what_conv_same_computes():
    import jax
    import jax.numpy as jnp
    from jax import lax

    from port.conv_grads import conv_general_dilated, routes_to_conv_same

    x, k3 = _arrays([(1, 6, 7, 4), (3, 3, 4, 5)])
    nhwc = ("NHWC", "HWIO", "NHWC")
    cases = [  # (strides, padding, dimension numbers, groups) -> routed?
        ((1, 1), ((1, 1), (1, 1)), nhwc, 1, True),
        ((1, 1), "SAME", nhwc, 1, True),
        ((2, 2), ((1, 1), (1, 1)), nhwc, 1, False),
        ((1, 1), ((0, 1), (0, 1)), nhwc, 1, False),
        ((1, 1), "VALID", nhwc, 1, False),
        ((1, 1), ((1, 1), (1, 1)), nhwc, 2, False),
        ((1, 1), ((1, 1), (1, 1)), None, 1, False),
    ]
    for strides, padding, dn, groups, routed in cases:
        kernel = jnp.asarray(k3[:, :, : 4 // groups, :4] if groups > 1 else k3)
        assert routes_to_conv_same(x.shape, kernel.shape, strides, padding,
                                   dimension_numbers=dn, feature_group_count=groups) == routed
        if dn is None:
            continue
        args = (strides, padding, None, None, dn, groups)
        got = conv_general_dilated(jnp.asarray(x), kernel, *args, precision="highest")
        want = lax.conv_general_dilated(jnp.asarray(x), kernel, *args, precision="highest")
        assert relative_l2(np.asarray(got), np.asarray(want)) <= RTOL
        jaxpr = str(jax.make_jaxpr(lambda a, b: conv_general_dilated(a, b, *args))(x, kernel))
        assert ("custom_vjp_call" in jaxpr) == routed, (strides, padding, groups)


def test_nnx_conv_with_the_drop_in_keeps_its_gradients():
    """The NNX front end uses the rewrite by handing nnx.Conv the drop-in."""
    import jax
    from flax import nnx

    from port.conv_grads import conv_general_dilated

    x, g = _arrays([(2, 7, 9, 3), (2, 7, 9, 6)], seed=9)

    def build(conv_fn):
        return nnx.Conv(3, 6, (3, 3), padding=((1, 1), (1, 1)), precision="highest",
                        conv_general_dilated=conv_fn, rngs=nnx.Rngs(0))

    grads = []
    for conv_fn in (conv_general_dilated, jax.lax.conv_general_dilated):
        model = build(conv_fn)
        grads.append(nnx.grad(lambda m: (m(x) * g).sum())(model))
    for name in ("kernel", "bias"):
        got, want = (np.asarray(getattr(gr, name)[...]) for gr in grads)
        assert relative_l2(got, want) <= RTOL, name


def test_fast_training_routes_all_40_convolutions_and_keeps_the_forward():
    """39 ConvBlocks (feat1, feat2, 12 per LBP, feature) through conv_bias_prelu and the
    last plain conv through conv_same, at dim 16; the prediction is the plain model's."""
    import jax
    import jax.numpy as jnp

    from core.config import DLNConfig
    from port.fast_training import fast_training
    from port.model import DLN
    from weights.convert import checkpoint_from_torch_state
    from weights.synthetic import random_torch_state

    cfg = DLNConfig(dim=16)
    params = checkpoint_from_torch_state(random_torch_state(cfg, seed=4), cfg).flax_tree()
    x = jnp.asarray(_arrays([(1, 12, 14, 3)], seed=2)[0] * 0.1 + 0.3)
    model = DLN(cfg)

    def fast(p, x):
        with fast_training(), jax.default_matmul_precision("highest"):
            return model.apply({"params": p}, x)

    def plain(p, x):
        with jax.default_matmul_precision("highest"):
            return model.apply({"params": p}, x)

    assert str(jax.make_jaxpr(fast)(params, x)).count("custom_vjp_call") == 40
    assert "custom_vjp_call" not in str(jax.make_jaxpr(plain)(params, x))
    got, want = np.asarray(jax.jit(fast)(params, x)), np.asarray(jax.jit(plain)(params, x))
    assert relative_l2(got, want) <= RTOL
