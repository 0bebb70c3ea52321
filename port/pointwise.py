"""1 x 1 convolutions as matrix products: how the port's inference runs fastest on XLA CPU.

Same module tree, same parameters, same products and sums as the plain forward;
only how XLA is asked to compute the 1 x 1 convolutions changes:

- A 1 x 1 convolution with stride 1 is a matrix product of the (pixels, cin) image
  with the (cin, cout) kernel. jaxlib 0.10's CPU backend sends every convolution
  to YNNPACK, whose 1 x 1 path runs at ~25-45 GFLOP/s here, against ~200+ GFLOP/s for
  its 3 x 3 convolutions; the same product written as `lax.dot_general` goes to
  XLA's matmul (~3x faster). The 1 x 1 convolutions are 7% of DLN's FLOPs but took
  23% of its time (see `dln bench` in the README for the profile).
- Nothing else is altered: the result differs from the convolution only by float32
  summation order (same tolerance as torch vs JAX, parity.engine.tolerance.FORWARD_ATOL).

The rewrite is a Flax method interceptor around `nn.Conv.__call__`, so port/model.py
stays the single definition of the network and parameter paths are unchanged.
"""

from __future__ import annotations

import flax.linen as nn
from jax import lax


def _is_pointwise(conv: nn.Conv) -> bool:
    """A 1 x 1, stride 1, undilated, ungrouped convolution: a matrix product per pixel."""
    ones = (1,) * len(conv.kernel_size)
    strides = conv.strides if conv.strides is not None else ones
    if isinstance(strides, int):
        strides = (strides,) * len(ones)
    padding = conv.padding
    zero_padding = (padding in ("VALID", "SAME")
                    or (not isinstance(padding, str)
                        and all(tuple(p) == (0, 0) for p in padding)))
    dilations = [conv.input_dilation, conv.kernel_dilation]
    return (tuple(conv.kernel_size) == ones and tuple(strides) == ones and zero_padding
            and all(d in (None, 1) or tuple(d) == ones for d in dilations)
            and conv.feature_group_count == 1 and not getattr(conv, "mask", None))


def pointwise_conv_as_dot(next_fun, args, kwargs, context):
    """Flax interceptor: compute a 1 x 1 nn.Conv as dot_general over the channel axis."""
    conv = context.module
    if (context.method_name != "__call__" or not isinstance(conv, nn.Conv)
            or not _is_pointwise(conv) or not conv.has_variable("params", "kernel")):
        return next_fun(*args, **kwargs)
    x = args[0]
    kernel = conv.get_variable("params", "kernel")
    matrix = kernel.reshape(kernel.shape[-2:])  # (1, 1, cin, cout) -> (cin, cout)
    y = lax.dot_general(x, matrix, (((x.ndim - 1,), (0,)), ((), ())), precision=conv.precision)
    if conv.use_bias:
        y = y + conv.get_variable("params", "bias")
    return y




def conv_general_dilated_pointwise_as_dot(lhs, rhs, window_strides, padding, lhs_dilation=None,
                                          rhs_dilation=None, dimension_numbers=None,
                                          feature_group_count=1, precision=None, **kwargs):
    """The same rewrite for Flax NNX, which has no method interceptor: a drop-in for
    `lax.conv_general_dilated`, given to an nnx.Conv as its `conv_general_dilated`
    attribute (port/nnx_inference.py sets it on the 1 x 1 convolutions of a copy of the
    model's graph; nnx.Conv adds the bias afterwards, as the Linen interceptor does).
    A 1 x 1, stride 1, unpadded, undilated, ungrouped NHWC / HWIO convolution becomes
    dot_general over the channel axis; anything else goes to lax.conv_general_dilated
    unchanged."""
    def plain():
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, precision=precision, **kwargs)

    if rhs.ndim != 4 or lhs.ndim != 4 or any(kwargs.get(k) is not None
                                             for k in ("preferred_element_type", "out_sharding")):
        return plain()
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    zero_padding = padding == "VALID" or (
        not isinstance(padding, str) and all(tuple(p) == (0, 0) for p in padding))
    if (tuple(rhs.shape[:2]) != (1, 1) or tuple(window_strides) != (1, 1) or not zero_padding
            or any(d is not None and tuple(d) != (1, 1) for d in (lhs_dilation, rhs_dilation))
            or feature_group_count != 1 or dimension_numbers != nhwc):
        return plain()
    matrix = rhs.reshape(rhs.shape[2:])  # (1, 1, cin, cout) -> (cin, cout)
    return lax.dot_general(lhs, matrix, (((3,), (0,)), ((), ())), precision=precision)
