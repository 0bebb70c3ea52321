"""Capturing every module's output in both frameworks, for any model, without changing it.

PyTorch: a forward hook on every module (or on a chosen set) records each output the
moment the module returns, so the order is the order in which modules *finish*
(children before parents); the root's output is the row `prediction`. A module
called several times gives one capture per call (`name#2`, `name#3`, ...); an
output that is a tuple, list or dict gives one capture per array leaf
(`name[0]`, `name['key']`).

Flax: `capture_intermediates` records the return value of every submodule's
`__call__` under its path (`enc/conv_0`), one entry per call; the same leaf suffixes
are used. The root's output is `prediction` as on the torch side.

Layouts: torch arrays with 3, 4 or 5 dimensions (NCL, NCHW, NCDHW) are moved to
channels-last (NLC, NHWC, NDHWC), the layout of Flax convolutions; 2-D (N, C) and
other arrays are kept as they are. Capture keys are (module name, suffix) pairs so
that the alignment renames only the module part.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import OrderedDict
from contextlib import ExitStack
from typing import Any, Callable, Iterator

import numpy as np

PREDICTION = "prediction"  # the row of the model's final output (torch: the root module)
# torch intra-op threads while the engine runs the reference. Once JAX has started
# its CPU thread pool in the same process, torch's OpenMP threads contend with it: on
# the 2-core development machine a dim-16 13x17 DLN capture took 2.1 s with 2 threads
# and 0.03 s with 1; dim 64 at 96x128 took 2.2-3.0 s vs 0.9 s. Restored afterwards.
TORCH_THREADS = 1


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


def channels_last(array: np.ndarray) -> np.ndarray:
    """NCL / NCHW / NCDHW -> NLC / NHWC / NDHWC; anything else unchanged."""
    if array.ndim in (3, 4, 5):
        return np.ascontiguousarray(np.moveaxis(array, 1, -1))
    return array


def channels_first(array: np.ndarray) -> np.ndarray:
    """Inverse of channels_last (for inputs given channels-last)."""
    if array.ndim in (3, 4, 5):
        return np.ascontiguousarray(np.moveaxis(array, -1, 1))
    return array


def flatten_output(value: Any, to_numpy: Callable[[Any], np.ndarray | None],
                   suffix: str = "") -> list[tuple[str, np.ndarray]]:
    """(suffix, array) for every array leaf of an output pytree (tuple, list, dict)."""
    if isinstance(value, dict):
        leaves = []
        for key in value:
            leaves += flatten_output(value[key], to_numpy, f"{suffix}[{key!r}]")
        return leaves
    if isinstance(value, (tuple, list)):
        leaves = []
        for i, item in enumerate(value):
            leaves += flatten_output(item, to_numpy, f"{suffix}[{i}]")
        return leaves
    array = to_numpy(value)
    return [] if array is None else [(suffix, array)]


def _torch_leaf(value) -> np.ndarray | None:
    import torch

    if isinstance(value, torch.Tensor) and value.is_floating_point():
        # copy now: a later in-place op (ReLU(inplace=True)) would overwrite it
        return channels_last(value.detach().cpu().float().numpy().copy())
    return None


def _flax_leaf(value) -> np.ndarray | None:
    if hasattr(value, "shape") and hasattr(value, "dtype") and \
            np.issubdtype(np.dtype(value.dtype), np.floating):
        return np.asarray(value, np.float32)
    return None


def call_suffix(call: int) -> str:
    return "" if call == 1 else f"#{call}"


@dataclasses.dataclass
class TorchCapture:
    """Outputs keyed by (module name, suffix) in finish order ('' is the root), each
    module's class name and the torch-layout shape of its first positional input."""

    outputs: "OrderedDict[tuple[str, str], np.ndarray]"
    kinds: dict[str, str]
    input_shapes: dict[str, tuple[int, ...]]


def capture_torch_modules(model, inputs: tuple, names: list[str] | None = None) -> TorchCapture:
    """Run `model(*inputs)` (torch tensors) once under no_grad with a hook on every named
    module (or on `names` only); the root's output always comes last."""
    import torch

    outputs: OrderedDict = OrderedDict()
    calls: dict[str, int] = {}
    input_shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())
    chosen = [n for n in modules if n] if names is None else list(names)

    def recorder(name: str):
        def hook(_module, args, output):
            calls[name] = calls.get(name, 0) + 1
            if calls[name] == 1 and args and isinstance(args[0], torch.Tensor):
                input_shapes[name] = tuple(args[0].shape)
            for suffix, array in flatten_output(output, _torch_leaf):
                outputs[(name, suffix + call_suffix(calls[name]))] = array
        return hook

    with ExitStack() as stack:
        for name in chosen:
            handle = modules[name].register_forward_hook(recorder(name))
            stack.callback(handle.remove)
        with torch.no_grad(), torch_threads():
            result = model(*inputs)
    for suffix, array in flatten_output(result, _torch_leaf):
        outputs[("", suffix)] = array
    kinds = {name: type(modules[name]).__name__ for name in chosen if name in modules}
    return TorchCapture(outputs, kinds, input_shapes)


def flatten_intermediates(tree: dict, prefix: str = "") -> dict[tuple[str, str], np.ndarray]:
    """capture_intermediates' nested dict -> {(flax path, suffix): array}; '' is the root."""
    flat: dict[tuple[str, str], np.ndarray] = {}
    for key, value in tree.items():
        if key == "__call__":
            for call, output in enumerate(value, 1):
                for suffix, array in flatten_output(output, _flax_leaf):
                    flat[(prefix, suffix + call_suffix(call))] = array
        elif isinstance(value, dict):
            flat.update(flatten_intermediates(value, f"{prefix}/{key}" if prefix else key))
    return flat


def capture_filter(wanted: frozenset[str] | None) -> Callable | bool:
    """capture_intermediates filter: the wanted paths' __call__ (all when None); the
    root's output is always recorded."""
    if wanted is None:
        return lambda module, method_name: method_name == "__call__"

    def keep(module, method_name: str) -> bool:
        return method_name == "__call__" and (not module.path or "/".join(module.path) in wanted)

    return keep


def make_flax_apply(module, wanted: frozenset[str] | None = None,
                    context: Callable[[], contextlib.AbstractContextManager] | None = None,
                    apply_kwargs: dict | None = None, jit: bool = True) -> Callable:
    """(variables, *inputs) -> intermediates tree of one `module.apply`.

    Every collection is mutable during the apply, so a module that updates its
    batch statistics (BatchNorm left in training mode) runs, and shows as a
    divergence, instead of failing. `context` is entered around the apply while it
    is traced (the zoo's interceptors and function patches); the models are not
    changed.
    """
    import jax

    keep = capture_filter(wanted)
    kwargs = dict(apply_kwargs or {})

    def run(variables, *inputs):
        with ExitStack() as stack:
            # parity is measured in true float32: no reduced-precision matmul/conv passes
            # (scoped to this trace; JAX's process-wide setting is left alone)
            stack.enter_context(jax.default_matmul_precision("highest"))
            if context is not None:
                stack.enter_context(context())
            _, state = module.apply(variables, *inputs, capture_intermediates=keep,
                                    mutable=True, **kwargs)
        return state["intermediates"]

    return jax.jit(run) if jit else run


def capture_flax_modules(module, variables: dict, inputs: tuple,
                         wanted: frozenset[str] | None = None,
                         context: Callable | None = None, apply_kwargs: dict | None = None,
                         apply_fn: Callable | None = None) -> dict[tuple[str, str], np.ndarray]:
    """Every submodule's output of one apply, keyed by (Flax path, suffix)."""
    import jax
    import jax.numpy as jnp

    fn = apply_fn or make_flax_apply(module, wanted, context, apply_kwargs)
    tree = fn(jax.tree_util.tree_map(jnp.asarray, variables),
              *[jnp.asarray(x) for x in inputs])
    return flatten_intermediates(jax.device_get(tree))
