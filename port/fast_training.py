"""The port's training rewrites for Flax Linen: DLN's convolutions with written-out gradients.

A Flax method interceptor (as port/pointwise.py's for inference), so port/model.py stays
the one definition of the network and parameter paths are unchanged; inside
`fast_training()` a `model.apply` computes:

- every 3 x 3 ConvBlock (convolution, bias, PReLU) as port.conv_grads.conv_bias_prelu:
  the pre-activation, bias and slope gradients in one pass, then the two convolution
  gradients;
- every 1 x 1 ConvBlock the same way, its convolution a matrix product per pixel;
- the last convolution (`out`, no activation) as port.conv_grads.conv_same plus its bias;
- anything else as written.

The forward values are those of the plain model up to float32 summation order; the
gradients are the same derivatives (tests/models/test_fast_training.py holds them to the
plain model's in float64 and float32).

For other front ends (flax.nnx) the same functions apply directly:
port.conv_grads.conv_general_dilated is a drop-in for an nnx.Conv's
`conv_general_dilated` attribute, and conv_bias_prelu(x, kernel, bias, slope) computes a
ConvBlock from its three parameters.
"""

from __future__ import annotations

import contextlib

import flax.linen as nn

from port.conv_grads import conv_bias_prelu, conv_same
from port.model import ConvBlock

REWRITES = ("ConvBlock (3x3 and 1x1): conv_bias_prelu, one-pass PReLU / bias backward",
            "convolution gradients: port.conv_grads (thin kernel gradients as products)",
            "1x1 convolutions: matrix products")


def _plain_same_conv(conv: nn.Conv) -> bool:
    """A stride-1, undilated, ungrouped conv with odd kernel and symmetric 'same' padding."""
    kh, kw = conv.kernel_size
    strides = conv.strides or (1, 1)
    padding = conv.padding
    same = ((kh // 2, kh // 2), (kw // 2, kw // 2))
    explicit = not isinstance(padding, str) and tuple(tuple(p) for p in padding) == same
    return (len(conv.kernel_size) == 2 and kh % 2 == 1 and kw % 2 == 1
            and tuple(strides) == (1, 1) and (explicit or padding == "SAME")
            and conv.input_dilation in (None, 1, (1, 1))
            and conv.kernel_dilation in (None, 1, (1, 1))
            and conv.feature_group_count == 1 and getattr(conv, "mask", None) is None)


def fast_training_interceptor(next_fun, args, kwargs, context):
    """Flax interceptor: DLN's ConvBlocks and plain convolutions with port.conv_grads."""
    module = context.module
    if context.method_name != "__call__" or kwargs or len(args) != 1:
        return next_fun(*args, **kwargs)
    if isinstance(module, ConvBlock) and "params" in module.variables:
        conv = module.conv
        params = module.variables["params"]
        if _plain_same_conv(conv) and conv.use_bias:
            return conv_bias_prelu(args[0], params["conv"]["kernel"], params["conv"]["bias"],
                                   params["act"]["negative_slope"], conv.precision)
    if isinstance(module, nn.Conv) and _plain_same_conv(module) \
            and module.has_variable("params", "kernel"):
        y = conv_same(args[0], module.get_variable("params", "kernel"), module.precision)
        if module.use_bias:
            y = y + module.get_variable("params", "bias")
        return y
    return next_fun(*args, **kwargs)


@contextlib.contextmanager
def fast_training():
    """Inside: Linen applies of DLN run the training rewrites (module docstring)."""
    with nn.intercept_methods(fast_training_interceptor):
        yield
