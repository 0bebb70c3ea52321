"""Capturing the output of every named block, in both frameworks, without touching the models.

PyTorch: forward hooks on the reference model's blocks record each output the moment
the block returns, so the recording order is the order in which blocks *finish*
(children before their parents). Flax: `capture_intermediates` records the return
value of every submodule's `__call__` under its path. Neither changes the code that
runs: the torch model is `reference_torch.model.DLN` loaded strictly, and the Flax
model is `port.model.DLN` applied with the same parameters users apply.

A "block" is what the issue names: every ConvBlock (conv + PReLU, compared as one),
the FA's two dense layers and the FA itself, each lightening/darkening op, each LBP,
the last plain conv `out`, and the final prediction. The conv and PReLU inside a
ConvBlock are not separate rows: a wrong 3x3 conv in `feat1` is reported as `feat1`.

Every captured array is float32 NHWC (or (N, C) for dense outputs), keyed by the
torch module name; the Flax path of a torch name follows the converter's rename rule
(`fusion.fc.0` -> `fusion/fc_0`).
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections import OrderedDict
from contextlib import ExitStack
from typing import Callable, Iterator

import numpy as np

PREDICTION = "prediction"  # the row of the model's final output (torch: the root module)
# torch intra-op threads while the harness runs the reference. Once JAX has started
# its CPU thread pool in the same process, torch's OpenMP threads contend with it: on
# the 2-core development machine a dim-16 13x17 capture took 2.1 s with 2 threads and
# 0.03 s with 1; dim 64 at 96x128 took 2.2-3.0 s vs 0.9 s. Restored afterwards.
TORCH_THREADS = 1
_SEQUENTIAL_INDEX = re.compile(r"\.(\d+)(?=\.|$)")


def flax_path(torch_name: str) -> str:
    """The Flax module path ('a/b/fc_0') of a torch module name ('a.b.fc.0')."""
    if torch_name == PREDICTION:
        return PREDICTION
    return _SEQUENTIAL_INDEX.sub(r"_\1", torch_name).replace(".", "/")


def torch_block_names(model) -> list[str]:
    """Names of the modules that are compared, in definition order."""
    from torch import nn

    from reference_torch.model import LBP, ConvBlock, FeatureAggregation, LighteningOp

    blocks = (ConvBlock, FeatureAggregation, LighteningOp, LBP, nn.Linear)
    names = []
    for name, module in model.named_modules():
        if not name:
            continue
        inside_convblock = isinstance(model.get_submodule(name.rpartition(".")[0]), ConvBlock) \
            if "." in name else False
        if isinstance(module, blocks) or (isinstance(module, nn.Conv2d) and not inside_convblock):
            names.append(name)
    return names


@contextlib.contextmanager
def torch_threads(count: int = TORCH_THREADS) -> Iterator[None]:
    """Run torch with `count` intra-op threads inside the block, then restore."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def to_nhwc(array: np.ndarray) -> np.ndarray:
    """torch NCHW -> NHWC; dense outputs (N, C) unchanged."""
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1)) if array.ndim == 4 else array


def capture_torch(model, x_nhwc: np.ndarray) -> "OrderedDict[str, np.ndarray]":
    """Run the reference model once on x (NHWC float32) and return every block's output
    (NHWC float32) in the order the blocks finished, then the prediction."""
    import torch

    outputs: OrderedDict[str, np.ndarray] = OrderedDict()

    def recorder(name: str):
        def hook(_module, _inputs, output):
            # copy now: later in-place ops (the FA's ReLU(inplace=True)) would overwrite it
            outputs[name] = to_nhwc(output.detach().cpu().numpy().copy())
        return hook

    x = torch.from_numpy(np.ascontiguousarray(np.asarray(x_nhwc, np.float32).transpose(0, 3, 1, 2)))
    with ExitStack() as stack:
        for name in torch_block_names(model):
            handle = model.get_submodule(name).register_forward_hook(recorder(name))
            stack.callback(handle.remove)
        with torch.no_grad(), torch_threads():
            prediction = model(x)
    outputs[PREDICTION] = to_nhwc(prediction.numpy().copy())
    return outputs


def _flatten_intermediates(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        if key == "__call__":
            flat[prefix or PREDICTION] = np.asarray(value[0], np.float32)
        elif isinstance(value, dict):
            flat.update(_flatten_intermediates(value, f"{prefix}/{key}" if prefix else key))
    return flat


def _capture_filter(wanted: set[str] | None) -> Callable | bool:
    """capture_intermediates filter: the wanted paths' __call__ (all when None)."""
    if wanted is None:
        return True

    def keep(module, method_name: str) -> bool:
        return method_name == "__call__" and (not module.path or "/".join(module.path) in wanted)

    return keep


@functools.lru_cache(maxsize=16)
def make_flax_capture(config, interceptor: Callable | None = None,
                      wanted: frozenset[str] | None = None) -> Callable:
    """jit(params, x) -> (prediction, {"intermediates": ...}) for port.model.DLN(config).

    `wanted`: Flax paths to record (None: every submodule); the root's output is always
    recorded. `interceptor` (a flax.linen method interceptor) lets the bug zoo alter
    the JAX side only; the harness itself never passes one. Cached, so that repeated
    runs of one config and input shape compile once.
    """
    import flax.linen as nn
    import jax

    import port.inference  # noqa: F401  (sets float32 "highest" matmul precision)
    from port.model import DLN

    model = DLN(config)
    keep = _capture_filter(wanted)

    def run(params, x):
        with ExitStack() as stack:
            if interceptor is not None:
                stack.enter_context(nn.intercept_methods(interceptor))
            return model.apply({"params": params}, x, capture_intermediates=keep,
                               mutable=["intermediates"])

    return jax.jit(run)


def capture_flax(config, params: dict, x_nhwc: np.ndarray, interceptor: Callable | None = None,
                 wanted: set[str] | None = None) -> dict[str, np.ndarray]:
    """Submodule outputs of one apply of port.model.DLN(config) with `params` (a nested
    Flax tree), keyed by Flax path ('prediction' for the model's own output)."""
    import jax.numpy as jnp

    capture = make_flax_capture(config, interceptor, None if wanted is None else frozenset(wanted))
    _, state = capture(params, jnp.asarray(x_nhwc, jnp.float32))
    return _flatten_intermediates(state["intermediates"])
