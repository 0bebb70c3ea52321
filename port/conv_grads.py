"""Convolution gradients for training, written out: the same derivatives, faster forms on XLA CPU.

`jax.grad` of a convolution asks XLA for two backward convolutions; XLA's CPU backend
sends both to YNNPACK. The input gradient is a forward convolution already (the
kernel flipped in space, its in and out channels swapped), but the kernel gradient is
a convolution whose "window" is the whole image, reached through transposes that put
the channels first and the batch last. For most of DLN's layers that is still the
fastest form measured here; for a thin side (few input or few output channels) it is
not: there the kernel gradient is a plain matrix product whose contraction runs over
the pixels (measured on a 2-core AMD EPYC at batch 4 x 96^2: feat1's 4 -> 128 kernel
gradient 58 ms of CPU as XLA writes it, ~8 ms as a product; `out`'s 64 -> 3, 39 ms
against ~5 ms).

Everything here is a `jax.custom_vjp` whose backward computes the textbook gradient
(no approximation); results differ from XLA's autodiff only by float32 summation
order, as XLA's own choice of algorithm does:

- `conv_same(x, kernel)`: stride 1, "same" zero padding (odd kernels), NHWC / HWIO.
  Backward: the input gradient as a forward convolution with the flipped, swapped
  kernel; the kernel gradient in the form `kernel_gradient` picks per shape.
- `conv_bias_prelu(x, kernel, bias, slope)`: a convolution, its bias and a PReLU with
  one shared slope (DLN's ConvBlock). The forward keeps only the convolution's output
  for the backward (the biased pre-activation is recomputed where it is needed), and
  the backward computes the pre-activation gradient, the bias and slope gradients in
  one pass before the two convolution gradients.
- `conv_general_dilated(...)`: a drop-in for `jax.lax.conv_general_dilated` that routes
  the cases above (2-D, stride 1, no dilation, one group, "same" padding) to
  `conv_same` and everything else to lax, so any module that takes a
  `conv_general_dilated` argument (flax.nnx.Conv, flax.linen.Conv) can use it.

Precision: every convolution and product here takes `precision=None`, which JAX
resolves to the `jax.default_matmul_precision` in force where the step is traced
(port.trainer traces at "highest", true float32).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")
# A side of the kernel gradient with at most this many columns (channels x kernel taps)
# is gathered into an explicit matrix and the gradient taken as one matrix product.
THIN_COLUMNS = 72


def same_padding(kernel_shape) -> tuple[tuple[int, int], tuple[int, int]]:
    kh, kw = kernel_shape[:2]
    return ((kh // 2, kh // 2), (kw // 2, kw // 2))


def _forward(x, kernel, precision):
    if kernel.shape[:2] == (1, 1):  # a matrix product per pixel (as port/pointwise.py)
        return lax.dot_general(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())),
                               precision=precision)
    return lax.conv_general_dilated(x, kernel, (1, 1), same_padding(kernel.shape),
                                    dimension_numbers=NHWC, precision=precision)


def input_gradient(g, kernel, precision=None):
    """d/dx of a stride-1 'same' convolution: the forward convolution of g with the
    kernel flipped in space and its in / out channels swapped."""
    flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
    return _forward(g, flipped, precision)


def _padded(x, kernel_shape):
    (pt, pb), (pl, pr) = same_padding(kernel_shape)
    return jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))


def _kernel_gradient_gather_input(x, g, kernel_shape, precision):
    """Every tap's shifted view of the padded input side by side, (pixels, taps x cin),
    contracted with g over the pixels."""
    kh, kw, cin, cout = kernel_shape
    _, h, w, _ = x.shape
    padded = _padded(x, kernel_shape)
    columns = jnp.concatenate([padded[:, dy:dy + h, dx:dx + w, :]
                               for dy in range(kh) for dx in range(kw)], axis=-1)
    grad = lax.dot_general(columns.reshape(-1, kh * kw * cin), g.reshape(-1, cout),
                           (((0,), (0,)), ((), ())), precision=precision)
    return grad.reshape(kh, kw, cin, cout)


def _kernel_gradient_place_output(x, g, kernel_shape, precision):
    """g placed at every tap's offset inside the padded frame, side by side, (frame
    pixels, taps x cout), contracted with the padded input over the frame."""
    kh, kw, cin, cout = kernel_shape
    padded = _padded(x, kernel_shape)
    placed = jnp.concatenate(
        [jnp.pad(g, ((0, 0), (dy, kh - 1 - dy), (dx, kw - 1 - dx), (0, 0)))
         for dy in range(kh) for dx in range(kw)], axis=-1)
    grad = lax.dot_general(padded.reshape(-1, cin), placed.reshape(-1, kh * kw * cout),
                           (((0,), (0,)), ((), ())), precision=precision)
    return grad.reshape(cin, kh, kw, cout).transpose(1, 2, 0, 3)


def _kernel_gradient_xla(x, g, kernel_shape, precision):
    zeros = jnp.zeros(kernel_shape, x.dtype)
    return jax.vjp(lambda k: _forward(x, k, precision), zeros)[1](g)[0]


def kernel_gradient_form(kernel_shape) -> str:
    """Which form kernel_gradient takes for a kernel of this shape: 'gather input' (one
    product of the input's shifted windows with g; every 1 x 1 kernel), 'place output'
    (one product of the padded input with g placed at every tap) or 'xla' (XLA's own
    backward convolution)."""
    kh, kw, cin, cout = kernel_shape
    if kh * kw == 1 or (kh * kw * cin <= THIN_COLUMNS and cin <= cout):
        return "gather input"
    if kh * kw * cout <= THIN_COLUMNS:
        return "place output"
    return "xla"


_KERNEL_GRADIENT_FORMS = {"gather input": _kernel_gradient_gather_input,
                          "place output": _kernel_gradient_place_output,
                          "xla": _kernel_gradient_xla}


def kernel_gradient(x, g, kernel_shape, precision=None):
    """d/dkernel of a stride-1 'same' convolution of x, given the output gradient g:
    the sum over pixels of x's shifted windows times g. One matrix product when the
    input side (taps x cin) or the output side (taps x cout) is thin, else XLA's own
    backward convolution (module docstring for the measured figures)."""
    form = _KERNEL_GRADIENT_FORMS[kernel_gradient_form(kernel_shape)]
    return form(x, g, tuple(kernel_shape), precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_same(x, kernel, precision=None):
    """Stride-1 'same' convolution, NHWC x HWIO (odd kernel sides)."""
    return _forward(x, kernel, precision)


def _conv_same_fwd(x, kernel, precision):
    return _forward(x, kernel, precision), (x, kernel)


def _conv_same_bwd(precision, residuals, g):
    x, kernel = residuals
    return _gradients(x, kernel, g, precision)


def _gradients(x, kernel, g, precision):
    """(input gradient, kernel gradient), each under a named scope (`input_grad_3x3`,
    `kernel_grad_3x3`) that profiles (parity.bench.train_profile) read."""
    size = "x".join(map(str, kernel.shape[:2]))
    with jax.named_scope(f"input_grad_{size}"):
        gx = input_gradient(g, kernel, precision)
    with jax.named_scope(f"kernel_grad_{size}"):
        gk = kernel_gradient(x, g, kernel.shape, precision)
    return gx, gk


conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)


def _prelu(z, slope):
    return jnp.where(z >= 0, z, slope * z)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def conv_bias_prelu(x, kernel, bias, slope, precision=None):
    """PReLU(conv_same(x, kernel) + bias) with one slope for every channel (z >= 0 passes
    unchanged, as flax.linen.PReLU and torch.nn.PReLU compute it)."""
    return _prelu(_forward(x, kernel, precision) + bias, slope)


def _conv_bias_prelu_fwd(x, kernel, bias, slope, precision):
    c = _forward(x, kernel, precision)
    return _prelu(c + bias, slope), (x, kernel, c, bias, slope)


def _conv_bias_prelu_bwd(precision, residuals, g):
    x, kernel, c, bias, slope = residuals
    z = c + bias
    negative = z < 0
    gz = jnp.where(negative, slope * g, g)
    gslope = jnp.sum(jnp.where(negative, z * g, 0.0)).reshape(jnp.shape(slope))
    gbias = jnp.sum(gz, axis=tuple(range(gz.ndim - 1)))
    gx, gk = _gradients(x, kernel, gz, precision)
    return gx, gk, gbias, gslope.astype(jnp.result_type(slope))


conv_bias_prelu.defvjp(_conv_bias_prelu_fwd, _conv_bias_prelu_bwd)


def routes_to_conv_same(lhs_shape, rhs_shape, window_strides, padding, lhs_dilation=None,
                        rhs_dilation=None, dimension_numbers=None,
                        feature_group_count: int = 1, batch_group_count: int = 1) -> bool:
    """Whether a lax.conv_general_dilated call is a case conv_same computes: 2-D NHWC x
    HWIO, stride 1, no dilation, one group, odd kernel, symmetric 'same' zero padding."""
    if len(rhs_shape) != 4 or len(lhs_shape) != 4 or dimension_numbers is None:
        return False
    if feature_group_count != 1 or batch_group_count != 1:
        return False
    ours = lax.conv_dimension_numbers(lhs_shape, rhs_shape, NHWC)
    if lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers) != ours:
        return False
    kh, kw = rhs_shape[:2]
    if tuple(window_strides) != (1, 1) or kh % 2 == 0 or kw % 2 == 0:
        return False
    if any(d is not None and tuple(d) != (1, 1) for d in (lhs_dilation, rhs_dilation)):
        return False
    if isinstance(padding, str):
        return padding.upper() == "SAME"
    return tuple(tuple(p) for p in padding) == same_padding(rhs_shape)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None,
                         **kwargs):
    """lax.conv_general_dilated, with conv_same's backward for the cases it covers
    (routes_to_conv_same); every other call goes to lax unchanged."""
    if (not kwargs and preferred_element_type is None and routes_to_conv_same(
            lhs.shape, rhs.shape, window_strides, padding, lhs_dilation, rhs_dilation,
            dimension_numbers, feature_group_count, batch_group_count)):
        return conv_same(lhs, rhs, _hashable(precision))
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count, precision, preferred_element_type,
                                    **kwargs)


def _hashable(precision):
    return tuple(precision) if isinstance(precision, list) else precision
