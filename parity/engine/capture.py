"""Capturing the output of every named block, in both frameworks, without touching the models.

PyTorch: forward hooks on the reference model's blocks record each output the moment
the block returns, so the recording order is the order in which blocks *finish*
(children before their parents). Flax: `capture_intermediates` records the return
value of every submodule's `__call__` under its path. Neither changes the code that
runs: the torch model is `reference_torch.model.DLN` loaded strictly, and the Flax
model is `port.model.DLN` applied with the same parameters users apply.

A "block" is one named unit of the network: every ConvBlock (conv + PReLU, compared as one),
the FA's two dense layers and the FA itself, each lightening/darkening op, each LBP,
the last plain conv `out`, and the final prediction. The conv and PReLU inside a
ConvBlock are not separate rows: a wrong 3x3 conv in `feat1` is reported as `feat1`.

Every captured array is float32 NHWC (or (N, C) for dense outputs), keyed by the
torch module name; the Flax path of a torch name follows the converter's rename rule
(`fusion.fc.0` -> `fusion/fc_0`). This is DLN's configuration of the model-agnostic
engine (parity/engine/hooks.py, block_compare.py, api.py): its block list.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Callable

import numpy as np

from parity.engine.block_compare import flax_path  # noqa: F401  (re-exported: the rename rule)
from parity.engine.hooks import (PREDICTION, TORCH_THREADS, capture_flax_modules,  # noqa: F401
                                 capture_torch_modules, channels_last, make_flax_apply,
                                 torch_threads)


def torch_block_names(model) -> list[str]:
    """Names of DLN's compared modules, in definition order."""
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


def to_nhwc(array: np.ndarray) -> np.ndarray:
    """torch NCHW -> NHWC; dense outputs (N, C) unchanged."""
    return channels_last(array) if array.ndim == 4 else array


def capture_torch(model, x_nhwc: np.ndarray) -> "OrderedDict[str, np.ndarray]":
    """Run the reference DLN once on x (NHWC float32) and return every block's output
    (NHWC float32) in the order the blocks finished, then the prediction."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(np.asarray(x_nhwc, np.float32).transpose(0, 3, 1, 2)))
    captured = capture_torch_modules(model, (x,), torch_block_names(model))
    return OrderedDict((PREDICTION if module == "" else module + suffix, value)
                       for (module, suffix), value in captured.outputs.items())


@functools.lru_cache(maxsize=16)
def make_flax_capture(config, interceptor: Callable | None = None,
                      wanted: frozenset[str] | None = None) -> Callable:
    """jit(variables, x) -> intermediates of port.model.DLN(config).

    `wanted`: Flax paths to record (None: every submodule); the root's output is always
    recorded. `interceptor` (a flax.linen method interceptor) lets the bug zoo alter
    the JAX side only; the harness itself never passes one. Cached, so that repeated
    runs of one config and input shape compile once.
    """
    import flax.linen as nn

    from port.model import DLN

    context = None if interceptor is None else (lambda: nn.intercept_methods(interceptor))
    return make_flax_apply(DLN(config), wanted, context)


def capture_flax(config, params: dict, x_nhwc: np.ndarray, interceptor: Callable | None = None,
                 wanted: set[str] | None = None) -> dict[str, np.ndarray]:
    """Submodule outputs of one apply of port.model.DLN(config) with `params` (a nested
    Flax tree), keyed by Flax path ('prediction' for the model's own output)."""
    fn = make_flax_capture(config, interceptor, None if wanted is None else frozenset(wanted))
    flat = capture_flax_modules(None, {"params": params}, (np.asarray(x_nhwc, np.float32),),
                                apply_fn=fn)
    return {(PREDICTION if path == "" else path) + suffix: value
            for (path, suffix), value in flat.items()}
