"""The hyperparameter diff: for every paired module, the settings that change results.

A port can compute a slightly different function whose effect stays under the numerical
tolerance for these inputs (LayerNorm eps 1e-5 for timm's 1e-6 on a large residual
stream) and shows on other inputs. So each setting below is read on both sides and a
mismatch is a failing row of its own ("hyperparameter mismatch"), placed before the
module's numerical row, whatever the numbers say.

    torch module (by MRO)            Flax side                      compared
    BatchNorm*, LayerNorm, GroupNorm, module of the pair            eps == epsilon
    InstanceNorm*, RMSNorm
    GroupNorm                        nn.GroupNorm                   num_groups
    BatchNorm* (training only)       nn.BatchNorm                   1 - momentum == momentum
    Conv1d/2d/3d                     nn.Conv                        stride, dilation, groups,
                                                                    padding (explicit pads at
                                                                    this input size), padding
                                                                    mode (zeros/reflect/circular)
    GELU                             gelu calls in the parent's scope  approximate
    *Pad1d/2d/3d                     jnp.pad calls, same            mode (reflect/edge/wrap/
                                                                    constant)
    Upsample                         jax.image.resize calls, same   method, align_corners,
                                                                    antialias (downsampling)
    MaxPool*/AvgPool*                max_pool/avg_pool calls, same  window, strides, pads
                                                                    (ceil_mode as a right pad),
                                                                    count_include_pad
    ReLU, ReLU6                      relu/relu6 calls, same         which (the clip at 6:
                                                                    random inputs rarely
                                                                    reach it)
A Flax conv or pool with no padding at all where torch pads is left to the numbers (the
port may pad the input itself first, with jnp.pad in torch's padding mode), and so is a
torch conv that pads nothing (its input may come from nn.ZeroPad2d, which the port folds
into 'SAME') or pads in a forward of its own (timm's Conv2dSame). Kinds or calls a port does not have are not read.
"""

from __future__ import annotations

import math

from parity.engine.rows import HYPERPARAMETER, Row

NORMS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LayerNorm", "GroupNorm",
         "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "RMSNorm")
CONVS = ("Conv1d", "Conv2d", "Conv3d")
POOLS = {f"{k}Pool{d}d": k.lower() for d in (1, 2, 3) for k in ("Max", "Avg")}
RESIZE_METHODS = {"nearest": "nearest", "linear": "linear", "bilinear": "linear",
                  "trilinear": "linear", "bicubic": "cubic"}


def base_kind(module, kinds) -> str | None:
    return next((c.__name__ for c in type(module).__mro__ if c.__name__ in kinds), None)


class Overlay:
    """A Flax module's attributes with some replaced (a zoo mutant's clone)."""

    def __init__(self, module, changes: dict):
        self._module, self._changes = module, changes

    def __getattr__(self, name):
        return self._changes[name] if name in self._changes else getattr(self._module, name)


def _tuple(value, n: int) -> tuple:
    if value is None:
        return (1,) * n
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def _same_pads(size, k, s, d) -> tuple[int, int]:
    total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def flax_pads(padding, sizes, kernel, strides, dilation) -> tuple | None:
    """Explicit (low, high) pads per spatial axis of a Flax padding, or None (a mode that
    pads by itself: compared by mode)."""
    n = len(sizes)
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return ((0, 0),) * n
        if padding.upper() in ("SAME", "CIRCULAR", "REFLECT"):
            return tuple(_same_pads(z, k, s, d)
                         for z, k, s, d in zip(sizes, kernel, strides, dilation))
        return None
    if isinstance(padding, int):
        return ((padding, padding),) * n
    items = list(padding)
    return tuple((p, p) if isinstance(p, int) else tuple(p) for p in items)


def effective_pads(pads, sizes, kernel, strides, dilation) -> tuple:
    """(low, high used) per axis: padding past the last window's reach changes nothing
    (torch's (1, 1) and a port's (1, 0) on a stride-2 conv of even size are the same
    function), so only the part a window reads is compared."""
    out = []
    for (low, high), n, k, s, d in zip(pads, sizes, kernel, strides, dilation):
        span = (k - 1) * d + 1
        count = (n + low + high - span) // s + 1
        out.append((low, max(0, (count - 1) * s + span - n - low)))
    return tuple(out)


def torch_conv_pads(module, sizes) -> tuple:
    n = len(sizes)
    k, s, d = (_tuple(module.kernel_size, n), _tuple(module.stride, n),
               _tuple(module.dilation, n))
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return ((0, 0),) * n
        return tuple(((kk - 1) * dd // 2, (kk - 1) * dd - (kk - 1) * dd // 2)
                     for kk, dd in zip(k, d))
    return tuple((p, p) for p in _tuple(module.padding, n))


def _flax_mode(padding) -> str:
    if isinstance(padding, str) and padding.upper() in ("CIRCULAR", "REFLECT"):
        return padding.lower()
    return "zeros"


def _mismatch(module: str, what: str, torch_value, flax_value, flax_path: str) -> Row:
    return Row(f"{module} [{what}]", None, None, None, None, None, HYPERPARAMETER,
               f"{flax_path} [{what}: torch {torch_value!r}, flax {flax_value!r}]", module)


def _close(a, b) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=0.0)


def module_rows(name: str, module, flax_path: str, flax, input_shape, training: bool
                ) -> list[Row]:
    rows = []
    norm = base_kind(module, NORMS)
    if norm is not None and hasattr(flax, "epsilon") and hasattr(module, "eps"):
        eps = module.eps
        if eps is None:   # torch.nn.RMSNorm's default: the dtype's machine epsilon
            eps = 1.1920928955078125e-07
        if not _close(eps, flax.epsilon):
            rows.append(_mismatch(name, "eps", float(eps), float(flax.epsilon), flax_path))
        if norm == "GroupNorm" and getattr(flax, "num_groups", None) is not None and \
                int(flax.num_groups) != int(module.num_groups):
            rows.append(_mismatch(name, "num_groups", module.num_groups, flax.num_groups,
                                  flax_path))
        if training and norm.startswith(("BatchNorm", "SyncBatchNorm")) and \
                hasattr(flax, "momentum"):
            if module.momentum is None:
                rows.append(_mismatch(name, "momentum", None, float(flax.momentum), flax_path))
            elif not _close(1 - module.momentum, flax.momentum):
                rows.append(_mismatch(name, "momentum (Flax = 1 - torch)",
                                      float(module.momentum), float(flax.momentum), flax_path))
    conv = base_kind(module, CONVS)
    if conv is not None and hasattr(flax, "kernel_dilation") and input_shape is not None:
        sizes = tuple(input_shape[2:])
        n = len(sizes)
        k = _tuple(module.kernel_size, n)
        for what, torch_value, flax_value in (
                ("stride", _tuple(module.stride, n), _tuple(flax.strides, n)),
                ("dilation", _tuple(module.dilation, n), _tuple(flax.kernel_dilation, n)),
                ("groups", module.groups, flax.feature_group_count)):
            if tuple(_tuple(torch_value, 1)) != tuple(_tuple(flax_value, 1)):
                rows.append(_mismatch(name, what, torch_value, flax_value, flax_path))
        strides, dilation = _tuple(flax.strides, n), _tuple(flax.kernel_dilation, n)
        theirs = flax_pads(flax.padding, sizes, k, strides, dilation)
        ours = torch_conv_pads(module, sizes)
        pads_itself = theirs is not None and all(p == (0, 0) for p in theirs)
        if _pads_in_forward(module):
            return rows    # timm's Conv2dSame pads in forward: its `padding` is not what runs
        mode = {"zeros": "zeros", "reflect": "reflect", "circular": "circular"}.get(
            module.padding_mode, module.padding_mode)
        # the mode matters only where torch pads; a port that pads by itself
        # (jnp.pad(..., mode="reflect"), then a VALID conv) is left to the numbers, which
        # differ at the border when its mode is wrong
        torch_pads = any(p != (0, 0) for p in ours)
        if torch_pads and mode != _flax_mode(flax.padding) and not pads_itself:
            rows.append(_mismatch(name, "padding mode", module.padding_mode, flax.padding,
                                  flax_path))
        # torch padding nothing: its input may come padded (nn.ZeroPad2d((0, 1, 0, 1)), a
        # VALID conv) where the port pads in its conv ('SAME') on the unpadded size, which
        # torch's input size does not show; a port padding where torch does not changes
        # the output's size, which the numbers fail
        if theirs is not None and not pads_itself and torch_pads and \
                effective_pads(theirs, sizes, k, strides, dilation) != \
                effective_pads(ours, sizes, k, strides, dilation):
            rows.append(_mismatch(name, "padding", ours, theirs, flax_path))
    return rows


def _pads_in_forward(module) -> bool:
    """A subclass of a torch conv with a forward of its own (timm's Conv2dSame computes
    TF 'SAME' pads from each input): the numbers judge its padding."""
    base = next((c for c in type(module).__mro__ if c.__module__.startswith("torch.nn.")),
                None)
    return base is not None and getattr(type(module), "forward", None) is not \
        getattr(base, "forward", None)


# ---- parameter-free modules against the function calls in their parent's scope ------
def _torch_pool_pads(module, sizes) -> tuple:
    n = len(sizes)
    k, s = _tuple(module.kernel_size, n), _tuple(module.stride or module.kernel_size, n)
    p = _tuple(module.padding, n)
    pads = []
    for size, kk, ss, pp in zip(sizes, k, s, p):
        extra = 0
        if getattr(module, "ceil_mode", False):
            out = -(-(size + 2 * pp - kk) // ss) + 1
            if (out - 1) * ss >= size + pp:   # torch: the last window starts inside
                out -= 1
            extra = max((out - 1) * ss + kk - (size + 2 * pp), 0)
        pads.append((pp, pp + extra))
    return tuple(pads)


def _call_argument(call, index: int, name: str, default=None):
    if name in call.kwargs:
        return call.kwargs[name]
    return call.args[index] if len(call.args) > index else default


def call_rows(name: str, module, call, input_shape) -> list[Row]:
    rows = []
    where = f"{call.scope or '(root)'}: {call.function} call {call.index}"
    kind = type(module).__name__
    if call.function == "gelu":
        torch_approx = getattr(module, "approximate", "none") == "tanh"
        flax_approx = bool(_call_argument(call, 0, "approximate", True))
        if torch_approx != flax_approx:
            rows.append(_mismatch(name, "GELU approximation",
                                  getattr(module, "approximate", "none"),
                                  "tanh" if flax_approx else "none (erf)", where))
    elif call.function == "resize":
        method = str(_call_argument(call, 1, "method", "")).lower()
        wanted = RESIZE_METHODS.get(getattr(module, "mode", ""), getattr(module, "mode", ""))
        ours = RESIZE_METHODS.get(method.replace("bi", "").replace("tri", ""), method)
        if "cubic" in method:
            ours = "cubic"
        if wanted != ours:
            rows.append(_mismatch(name, "resize method", module.mode, method, where))
        if getattr(module, "align_corners", None):
            rows.append(_mismatch(name, "align_corners", True,
                                  "half-pixel (jax.image.resize has no align_corners)", where))
        shape = _call_argument(call, 0, "shape")
        antialias = bool(call.kwargs.get("antialias", True))
        if antialias and input_shape is not None and shape is not None and \
                wanted != "nearest" and math.prod(shape) < math.prod(input_shape):
            rows.append(_mismatch(name, "antialias", False, True, where))
    elif call.function == "pad":
        mode = str(call.kwargs.get("mode", call.args[1] if len(call.args) > 1 else "constant"))
        wanted = {"ReflectionPad": "reflect", "ReplicationPad": "edge",
                  "CircularPad": "wrap"}.get(kind[:-2], "constant")
        if mode != wanted:
            rows.append(_mismatch(name, "padding mode", kind, mode, where))
    elif call.function in ("relu", "relu6"):
        wanted = "relu6" if base_kind(module, ("ReLU6",)) else "relu"
        if call.function != wanted:
            rows.append(_mismatch(name, "activation", kind, call.function, where))
    elif call.function in ("max_pool", "avg_pool") and input_shape is not None:
        sizes = tuple(input_shape[2:])
        n = len(sizes)
        window = tuple(_call_argument(call, 0, "window_shape", ()))
        strides = _tuple(_call_argument(call, 1, "strides", None), n)
        k = _tuple(module.kernel_size, n)
        s = _tuple(module.stride or module.kernel_size, n)
        if window != k:
            rows.append(_mismatch(name, "pool window", k, window, where))
        if strides != s:
            rows.append(_mismatch(name, "pool stride", s, strides, where))
        theirs = flax_pads(_call_argument(call, 2, "padding", "VALID"), sizes, window, strides,
                           (1,) * n)
        ours = _torch_pool_pads(module, sizes)
        pads_itself = theirs is not None and all(p == (0, 0) for p in theirs)
        if theirs is not None and not pads_itself and \
                effective_pads(theirs, sizes, window, strides, (1,) * n) != \
                effective_pads(ours, sizes, k, s, (1,) * n):
            what = "pool padding" + (" (ceil_mode)" if getattr(module, "ceil_mode", False)
                                     else "")
            rows.append(_mismatch(name, what, ours, theirs, where))
        if call.function == "avg_pool" and any(p != (0, 0) for p in ours):
            flax_count = bool(_call_argument(call, 3, "count_include_pad", True))
            if flax_count != bool(getattr(module, "count_include_pad", True)):
                rows.append(_mismatch(name, "count_include_pad", module.count_include_pad,
                                      flax_count, where))
    return rows


CALL_KINDS = {"GELU": "gelu", "Upsample": "resize", **{k: f"{v}_pool" for k, v in POOLS.items()},
              **{f"{k}Pad{d}d": "pad" for d in (1, 2, 3)
                 for k in ("Reflection", "Replication", "Zero", "Constant", "Circular")},
              "Hardswish": "hard_swish", "Hardsigmoid": "hard_sigmoid",
              "ReLU6": "relu", "ReLU": "relu"}
# calls of one family are paired with the torch modules of that kind in call order
CALL_FAMILY = {"relu6": "relu"}


def call_kind(module) -> str | None:
    return next((CALL_KINDS[c.__name__] for c in type(module).__mro__
                 if c.__name__ in CALL_KINDS), None)


def paired_calls(port, calls=None) -> list[tuple[str, object]]:
    """(torch module name, Flax FunctionCall) for every parameter-free torch module (GELU,
    Upsample, pooling, padding, hard activations) whose nearest ancestor with a Flax
    counterpart (the root at least) makes exactly as many calls of the matching function
    as it holds such modules: the k-th module is the k-th call. Others are not paired
    (left to the numbers)."""
    if port.torch_model is None:
        return []
    calls = port.calls if calls is None else calls
    modules = dict(port.torch_model.named_modules())
    order = [n for n in dict.fromkeys([*port.reference.order, *modules]) if n in modules and n]
    groups: dict[tuple[str, str], list[str]] = {}
    for name in order:
        function = call_kind(modules[name])
        if function is None:
            continue
        parts = name.split(".")[:-1]
        scope = ""     # the nearest ancestor the port has and runs (the root at least)
        ran = getattr(port.census, "ran", None)
        for i in range(len(parts), 0, -1):
            found = port.flax_path_of(".".join(parts[:i]))
            if found is not None and (ran is None or found in ran):
                scope = found
                break
        groups.setdefault((scope, function), []).append(name)
    out = []
    for (scope, function), names in groups.items():
        found = [c for c in calls if CALL_FAMILY.get(c.function, c.function) == function
                 and c.scope == scope]
        if len(found) == len(names):
            out += list(zip(names, found))
    return out


def hyperparameter_rows(port, attributes: dict | None = None, calls=None) -> list[Row]:
    """Mismatch rows of a prepared port (parity.engine.prepared.PreparedPort), in torch
    call order. attributes: {Flax path: {attribute: value}} read instead of the port's
    (a zoo mutant's clone); calls: the Flax function calls (default the port's)."""
    if port.torch_model is None:
        return []
    attributes = attributes or {}
    modules = dict(port.torch_model.named_modules())
    order = list(dict.fromkeys([*port.reference.order, *modules]))
    training = bool(getattr(port, "training", False))
    by_module = dict(paired_calls(port, calls))
    rows: list[Row] = []
    for name in order:
        module = modules.get(name)
        if module is None or not name:
            continue
        shape = port.reference.input_shapes.get(name)
        try:
            if call_kind(module) is not None:
                if name in by_module:
                    rows += call_rows(name, module, by_module[name], shape)
                continue
            path = port.flax_path_of(name)
            flax = port.census.modules.get(path) if path is not None else None
            if flax is None:
                continue
            if path in attributes:
                flax = Overlay(flax, attributes[path])
            rows += module_rows(name, module, path, flax, shape, training)
        except (AttributeError, TypeError, ValueError):
            # a port's own module with unexpected settings (a padding given in a form of
            # its own): not read here; the numbers still judge it
            continue
    return rows


def changed_calls(calls, changes: dict):
    """The calls with some keyword arguments replaced: {(function, scope, index): {kw: v}}."""
    import dataclasses

    return [dataclasses.replace(c, kwargs={**c.kwargs, **changes[(c.function, c.scope,
                                                                   c.index)]})
            if (c.function, c.scope, c.index) in changes else c for c in calls]


def merged(rows: list[Row], mismatches: list[Row]) -> list[Row]:
    """The report's rows with each mismatch row just before its module's first row (or
    that of its nearest ancestor with a row), else at the end."""
    if not mismatches:
        return rows
    out = list(rows)
    for row in mismatches:
        parts = row.module.split(".")
        names = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
        at = next((i for n in names for i, r in enumerate(out) if r.module == n), len(out))
        out.insert(at, row)
    return out
