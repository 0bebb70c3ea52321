"""The torch side: every module's output of one run, without changing the model.

A forward hook on every module (or on a chosen set) records each output the moment the
module returns, so the order is the order in which modules *finish* (children before
parents); the root's output is what the call returns, recorded last under ''. Arrays of
3, 4 or 5 dimensions (NCL, NCHW, NCDHW) are moved channels-last, the layout of Flax
convolutions; 2-D and other arrays are kept as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import OrderedDict
from contextlib import ExitStack
from typing import Iterator

import numpy as np

from parity.engine.frontend import as_input_tuple, call_suffix, channels_last, flatten_output

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


def _leaf(value) -> np.ndarray | None:
    import torch

    if isinstance(value, torch.Tensor) and value.is_floating_point():
        # copy now: a later in-place op (ReLU(inplace=True)) would overwrite it
        return channels_last(value.detach().cpu().float().numpy().copy())
    return None


@dataclasses.dataclass
class TorchCapture:
    """Outputs keyed by (module name, suffix) in finish order ('' is the root), each
    module's class name and the torch-layout shape of its first positional input."""

    outputs: "OrderedDict[tuple[str, str], np.ndarray]"
    kinds: dict[str, str]
    input_shapes: dict[str, tuple[int, ...]]


def record_torch(model, inputs, names: list[str] | None = None) -> TorchCapture:
    """Run `model(*inputs)` (numpy, torch layout) once under no_grad with a hook on every
    named module (or on `names` only); the root's output comes last."""
    import torch

    tensors = [torch.from_numpy(np.ascontiguousarray(x)) for x in as_input_tuple(inputs)]
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
            for suffix, array in flatten_output(output, _leaf):
                outputs[(name, suffix + call_suffix(calls[name]))] = array
        return hook

    with ExitStack() as stack:
        for name in chosen:
            handle = modules[name].register_forward_hook(recorder(name))
            stack.callback(handle.remove)
        with torch.no_grad(), torch_threads():
            result = model(*tensors)
    for suffix, array in flatten_output(result, _leaf):
        outputs[("", suffix)] = array
    kinds = {name: type(modules[name]).__name__ for name in chosen if name in modules}
    return TorchCapture(outputs, kinds, input_shapes)
