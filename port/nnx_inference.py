"""Running the NNX DLN on images: a jitted PURE function of (params, x), like the Linen port's.

`make_nnx_apply(config)` has the signature and the result of port.inference.make_apply
and takes the same params tree (nested dicts under the converter's Flax names, e.g.
`Checkpoint.flax_tree()`), so whatever runs the Linen apply can run this one instead:
the NNX state's paths are those names (port/nnx_model.py).

The hot path is `jax.jit` of a plain function, not `nnx.jit`: the model's graph is
split once (`nnx.split` of the abstract model, no weights drawn); inside the traced
function the params become an nnx.State and are merged with that graph, which costs
Python work at trace time only. A call is then a jit dispatch of the params pytree
and the image, as for Linen; no graph is walked per call.

Precision is traced in, as for Linen (`jax.default_matmul_precision(precision)`, by
default "highest": true float32). pointwise_as_dot: the 1 x 1 convolutions of the
graph copy get port.pointwise's dot_general drop-in as their `conv_general_dilated`
(NNX has no method interceptor), the rewrite the Linen port's inference makes.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.traverse_util import flatten_dict

from core.config import DLNConfig
from port.inference import PARITY_PRECISION, params_to_device
from port.nnx_model import DLN, abstract_model
from port.pointwise import conv_general_dilated_pointwise_as_dot


def _pointwise(conv: nnx.Conv) -> bool:
    """A 1 x 1, stride 1, unpadded convolution (the drop-in re-checks every argument)."""
    return tuple(conv.kernel_size) == (1, 1)


def inference_graph(config: DLNConfig, pointwise_as_dot: bool = True
                    ) -> tuple[nnx.GraphDef, dict[tuple, nnx.Variable]]:
    """The DLN's graph (with the 1 x 1 convolutions rewritten when asked) and its abstract
    variables by path tuple; `DLN` is built under nnx.eval_shape, so nothing is drawn."""
    model = abstract_model(config)
    if pointwise_as_dot:
        for _, module in nnx.iter_modules(model):
            if isinstance(module, nnx.Conv) and _pointwise(module):
                module.conv_general_dilated = conv_general_dilated_pointwise_as_dot
    graphdef, state = nnx.split(model)
    return graphdef, dict(nnx.to_flat_state(state))


def merge_params(graphdef: nnx.GraphDef, abstract: dict[tuple, nnx.Variable], params: dict) -> DLN:
    """The model with these params (nested dict under the Flax names), each value placed
    in its variable's slot by path. Meant for traced code (checks are at load time:
    weights.nnx_state); a missing name is a KeyError, an extra one is ignored here."""
    flat = flatten_dict(params)
    state = nnx.from_flat_state([(path, var.replace(flat[tuple(map(str, path))]))
                                 for path, var in abstract.items()])
    return nnx.merge(graphdef, state)


def make_nnx_apply(config: DLNConfig, pointwise_as_dot: bool = True,
                   precision: str = PARITY_PRECISION) -> Callable:
    """jit(params, x_nhwc) -> prediction: port.inference.make_apply's contract, run by the
    NNX port. params: the nested Flax-named tree (`Checkpoint.flax_tree()`)."""
    graphdef, abstract = inference_graph(config, pointwise_as_dot)

    def forward(params, x):
        with jax.default_matmul_precision(precision):
            return merge_params(graphdef, abstract, params)(x)

    return jax.jit(forward)


def make_nnx_enhancer(params_tree: dict, config: DLNConfig
                      ) -> Callable[[np.ndarray], np.ndarray]:
    """One RGB float32 HWC image -> the NNX network's float32 HWC output."""
    apply = make_nnx_apply(config)
    params = params_to_device(params_tree)

    def enhance(image: np.ndarray) -> np.ndarray:
        out = apply(params, jnp.asarray(image, jnp.float32)[None])
        return np.asarray(jax.block_until_ready(out))[0]

    return enhance
