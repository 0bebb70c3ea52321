"""The torch side: every module's output of one run, without changing the model.

A forward hook on every module (or on a chosen set) records each output the moment the
module returns, so the order is the order in which modules *finish* (children before
parents); the root's output is what the call returns, recorded last under ''. Each
output is moved channels-last (the layout of Flax convolutions) or kept as it is by what
produced it, never by its shape (record_torch says how); the layout of each is kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import OrderedDict
from contextlib import ExitStack
from typing import Iterator

import numpy as np

from core.errors import UserError
from parity.engine.frontend import (AS_IS, CHANNELS_LAST, as_input_tuple, call_suffix,
                                    default_layout, move)

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


# torch module kinds (by a class name of their MRO) whose output is channels-first
# (N, C, *): a port's Flax module gives it channels-last
CHANNELS_FIRST_KINDS = frozenset(
    [f"{k}{d}d" for d in (1, 2, 3) for k in (
        "Conv", "ConvTranspose", "BatchNorm", "InstanceNorm", "MaxPool", "AvgPool",
        "AdaptiveAvgPool", "AdaptiveMaxPool", "LPPool", "ReflectionPad", "ReplicationPad",
        "ZeroPad", "ConstantPad", "CircularPad", "FractionalMaxPool", "MaxUnpool")]
    + ["GroupNorm", "Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d", "PixelShuffle",
       "PixelUnshuffle", "LocalResponseNorm", "ChannelShuffle", "SyncBatchNorm"])
# kinds that read and write the last axis as features: their output is compared as it is
TOKEN_KINDS = frozenset(["Linear", "LayerNorm", "RMSNorm", "MultiheadAttention", "Embedding",
                         "Bilinear", "LazyLinear"])


def kind_layout(module) -> str | None:
    """CHANNELS_LAST / AS_IS for a module kind that decides the layout of what it writes
    (and reads), None for kinds that keep whatever they are given."""
    for cls in type(module).__mro__:
        if cls.__name__ in CHANNELS_FIRST_KINDS:
            return CHANNELS_LAST
        if cls.__name__ in TOKEN_KINDS:
            return AS_IS
    return None


def _float_tensor(value) -> bool:
    import torch

    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _tensor_leaves(value, suffix: str = "") -> list:
    """(suffix, tensor) for every floating tensor of an output pytree."""
    if isinstance(value, dict):
        return [leaf for key in value for leaf in _tensor_leaves(value[key], f"{suffix}[{key!r}]")]
    if isinstance(value, (tuple, list)):
        return [leaf for i, item in enumerate(value)
                for leaf in _tensor_leaves(item, f"{suffix}[{i}]")]
    return [(suffix, value)] if _float_tensor(value) else []


class LayoutUnknown(UserError, ValueError):
    """A 3-D input whose layout is neither declared nor found from what reads it."""


@dataclasses.dataclass
class TorchCapture:
    """Outputs keyed by (module name, suffix) in finish order ('' is the root), each moved
    as its layout says; each module's class name and the torch-layout shape of its first
    positional input; the order in which modules were called; per output, the layout it
    was compared in and why (from what produced it); per input, its layout."""

    outputs: "OrderedDict[tuple[str, str], np.ndarray]"
    kinds: dict[str, str]
    input_shapes: dict[str, tuple[int, ...]]
    order: list[str] = dataclasses.field(default_factory=list)
    layouts: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    input_layouts: tuple[str, ...] = ()
    # modules of a class of their own that extend a torch layer kind with child modules
    # (timm's BatchNormAct2d: a BatchNorm2d whose output has passed its `act`): a port's
    # layer of the base kind gives its output before those children, so these rows are
    # not judged (the next module's row is, with the children as suspects)
    composite: frozenset = frozenset()


def _consumer_layout(tensor_id: int, readers: dict[int, list], skip=None) -> str | None:
    """The layout the first module reading this tensor gives it, by its kind; only torch's
    own classes count (a subclass such as timm's LayerNorm2d permutes what it reads)."""
    for module in readers.get(tensor_id, []):
        if module is not skip and type(module).__module__.startswith("torch.nn."):
            layout = kind_layout(module)
            if layout is not None:
                return layout
    return None


def record_torch(model, inputs, names: list[str] | None = None,
                 input_layouts: list[str | None] | None = None) -> TorchCapture:
    """Run `model(*inputs)` (numpy, torch layout) once under no_grad with a hook on every
    named module (or on `names` only); the root's output comes last.

    Layouts are never guessed from shapes. An output's layout comes from what produced
    it: a module of a channels-first kind (conv, norm over channels, pooling, padding,
    upsampling; subclasses too) writes channels-first (compared channels-last); the same
    tensor object an inner module returned has its layout; a module whose output has its
    input's shape keeps its input's layout; a module of a token kind (Linear, LayerNorm,
    attention, embedding) writes as-is; else the first of torch's own modules of either
    kind that reads it decides; else 4-D/5-D is channels-first and the rest as-is. input_layouts: per
    input CHANNELS_LAST / AS_IS / None (default_layout; a 3-D input then takes the layout
    of the first module that reads it, or LayoutUnknown is raised)."""
    import torch

    arrays = as_input_tuple(inputs)
    tensors = [torch.from_numpy(np.ascontiguousarray(x)) for x in arrays]
    declared = list(input_layouts or getattr(arrays, "layouts", None) or [None] * len(arrays))
    modules = dict(model.named_modules())
    chosen = [n for n in modules if n] if names is None else list(names)
    hooked = set(chosen)
    raw: list = []                  # (name, suffix, tensor, module, first input)
    calls: dict[str, int] = {}
    input_shapes: dict[str, tuple[int, ...]] = {}
    order: list[str] = []
    readers: dict[int, list] = {}   # id(tensor) -> modules reading it, in call order
    keep: list = []                 # every tensor seen stays alive: ids stay unique

    def before(module, args):
        if args and _float_tensor(args[0]):
            readers.setdefault(id(args[0]), []).append(module)
            keep.append(args[0])

    def recorder(name: str):
        def pre(module, args):
            order.append(name)
        def hook(module, args, output):
            calls[name] = calls.get(name, 0) + 1
            first = args[0] if args and _float_tensor(args[0]) else None
            if calls[name] == 1 and first is not None:
                input_shapes[name] = tuple(first.shape)
            for suffix, tensor in _tensor_leaves(output):
                # copy now: a later in-place op (ReLU(inplace=True)) would overwrite it
                raw.append((name, suffix + call_suffix(calls[name]), tensor,
                            tensor.detach().cpu().float().numpy().copy(), module, first))
                keep.append(tensor)
        return pre, hook

    with ExitStack() as stack:
        for name, module in modules.items():
            handle = module.register_forward_pre_hook(before)
            stack.callback(handle.remove)
        for name in chosen:
            pre, hook = recorder(name)
            for handle in (modules[name].register_forward_pre_hook(pre),
                           modules[name].register_forward_hook(hook)):
                stack.callback(handle.remove)
        with torch.no_grad(), torch_threads():
            result = model(*tensors)
    for i, (tensor, layout) in enumerate(zip(tensors, declared)):
        layout = layout or default_layout(arrays[i]) or _consumer_layout(id(tensor), readers)
        if layout is None:
            raise LayoutUnknown(
                f"input {i} has shape {tuple(arrays[i].shape)}: a 3-D input may be (N, C, L) "
                "or tokens (N, L, C) and no module that reads it tells which; pass "
                "--input-layout channels-last (N, C, L) or as-is (tokens)")
        declared[i] = layout
    tags: dict[int, str] = {id(t): layout for t, layout in zip(tensors, declared)}
    outputs: OrderedDict = OrderedDict()
    layouts: dict[tuple[str, str], str] = {}

    def decide(tensor, module, first) -> str:
        by_kind = kind_layout(module) if module is not None else None
        if by_kind == CHANNELS_LAST:   # its own kind writes channels-first (BatchNormAct2d)
            return by_kind
        if id(tensor) in tags:
            return tags[id(tensor)]
        if first is not None and id(first) in tags and tuple(first.shape) == tuple(tensor.shape):
            return tags[id(first)]
        if by_kind is not None:
            return by_kind
        found = _consumer_layout(id(tensor), readers, skip=module)
        if found is not None:
            return found
        return CHANNELS_LAST if tensor.ndim in (4, 5) else AS_IS

    for name, suffix, tensor, array, module, first in raw:
        layout = decide(tensor, module, first)
        tags.setdefault(id(tensor), layout)
        outputs[(name, suffix)] = move(array, layout)
        layouts[(name, suffix)] = layout
    for suffix, tensor in _tensor_leaves(result):
        layout = decide(tensor, None, None)
        outputs[("", suffix)] = move(tensor.detach().cpu().float().numpy().copy(), layout)
        layouts[("", suffix)] = layout
    kinds = {name: type(modules[name]).__name__ for name in chosen if name in modules}
    composite = frozenset(name for name in chosen if name in modules and
                          _extends_a_layer(modules[name]))
    del keep
    return TorchCapture(outputs, kinds, input_shapes, [n for n in order if n in hooked],
                        layouts, tuple(declared), composite)


def _extends_a_layer(module) -> bool:
    kind = type(module)
    return not kind.__module__.startswith("torch.nn.") and kind_layout(module) is not None \
        and any(True for _ in module.children())
