"""The Linen frontend (parity/engine/frontend.py's interface for flax.linen ports).

Capture: `capture_intermediates` records the return value of every submodule's
`__call__` under its path (`enc/conv_0`); the root's entry is what `apply` returns, so a
port whose `__call__` post-processes `super().__call__(x)` is judged by its final output,
not by the inner call. The same holds for every submodule: a call made while the same
module's `__call__` is still running (a subclass calling `super().__call__`) is not
recorded, only the outermost one is (a second call after the first returned is `#2`).
Every collection is mutable during the apply, so a module that updates batch
statistics (BatchNorm left in training mode) runs, and shows as a divergence, instead
of failing. Applies are traced at "highest" matmul precision (true
float32, scoped to the trace) and cached per model, chosen paths and shape.

The zoo's contexts are Flax method interceptors (a module run as a clone with changed
attributes, or given a changed input) and stand-ins for the functions ports call from
`jax.nn`, `flax.linen` and `jax.image`, each call attributed to the innermost module
running it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from contextlib import ExitStack
from typing import Callable, Iterator

import numpy as np

from parity.engine.frontend import (Census, FunctionCall, call_suffix, flatten_output,
                                    flax_inputs, traced_function_calls, VariableTree)
from weights.trees import flatten_tree, flax_path_candidates

# (function name, namespaces ports call it from)
PATCHABLE = {
    "gelu": ("jax.nn", "flax.linen", "flax.linen.activation", "flax.nnx"),
    "leaky_relu": ("jax.nn", "flax.linen", "flax.linen.activation", "flax.nnx"),
    "resize": ("jax.image",),
    "max_pool": ("flax.linen", "flax.linen.pooling", "flax.nnx"),
    "avg_pool": ("flax.linen", "flax.linen.pooling", "flax.nnx"),
    "pad": ("jax.numpy",),
    "hard_swish": ("jax.nn", "flax.linen", "flax.linen.activation", "flax.nnx"),
    "hard_sigmoid": ("jax.nn", "flax.linen", "flax.linen.activation", "flax.nnx"),
    # torch ReLU vs ReLU6: with random weights and inputs in [0, 1) an activation rarely
    # reaches 6, so a port calling relu for ReLU6 agrees numerically; the diff reads them
    "relu": ("jax.nn", "flax.linen", "flax.linen.activation", "flax.nnx"),
    "relu6": ("jax.nn", "flax.linen", "flax.linen.activation", "flax.nnx"),
}
APPLY_CACHE_SIZE = 16  # compiled applies kept per process (model, chosen paths, arguments)
_APPLY_CACHE: dict = {}


def _leaf(value) -> np.ndarray | None:
    if hasattr(value, "shape") and hasattr(value, "dtype") and \
            np.issubdtype(np.dtype(value.dtype), np.floating):
        return np.asarray(value, np.float32)
    return None


def _intermediates(tree: dict, prefix: str = "") -> dict[tuple[str, str], np.ndarray]:
    flat: dict[tuple[str, str], np.ndarray] = {}
    for key, value in tree.items():
        if key == "__call__":
            for call, output in enumerate(value, 1):
                for suffix, array in flatten_output(output, _leaf):
                    flat[(prefix, suffix + call_suffix(call))] = array
        elif isinstance(value, dict):
            flat.update(_intermediates(value, f"{prefix}/{key}" if prefix else key))
    return flat


class LinenFrontend(VariableTree):
    kind = "linen"

    def __init__(self, module, apply_kwargs: dict | None = None):
        self.module = module
        self.apply_kwargs = dict(apply_kwargs or {})
        # training mode (`dln check --train`): every BatchNorm normalises with the batch's
        # statistics and updates its averages, which make_apply returns as outputs
        # (path, '.running_mean' / '.running_var'); Dropout stays deterministic
        self.training = False

    # ---- names and variables -----------------------------------------------------------
    path_candidates = staticmethod(flax_path_candidates)

    def apply(self, variables, *inputs):
        return self.module.apply(variables, *inputs, **self.apply_kwargs)

    def census(self, inputs) -> Census:
        import flax.linen as nn
        import jax

        modules: dict[str, object] = {}

        def record(next_fun, args, kwargs, context):
            modules.setdefault("/".join(context.module.path), context.module)
            return next_fun(*args, **kwargs)

        def init(*xs):
            with nn.intercept_methods(record):
                return self.module.init(jax.random.PRNGKey(0), *xs, **self.apply_kwargs)

        shapes = jax.eval_shape(init, *[jax.ShapeDtypeStruct(x.shape, np.float32)
                                        for x in flax_inputs(inputs)])
        flat = {k: tuple(v.shape) for k, v in flatten_tree(dict(shapes)).items()
                if not k.startswith("intermediates/")}
        return Census(modules, flat)

    # ---- capture -------------------------------------------------------------------------
    def make_apply(self, wanted: frozenset[str] | None = None, context: Callable | None = None,
                   jit: bool = True) -> Callable:
        """fn(variables, *inputs) -> {(path, suffix): float32 output} (see the module note)."""
        key = None
        if context is None and jit:
            try:
                key = (self.module, wanted, tuple(sorted(self.apply_kwargs.items())),
                       self.training)
                hash(key)
            except TypeError:
                key = None
            if key in _APPLY_CACHE:
                return _APPLY_CACHE[key]
        fn = self._make_apply(wanted, context, jit)
        if key is not None:
            if len(_APPLY_CACHE) >= APPLY_CACHE_SIZE:
                _APPLY_CACHE.pop(next(iter(_APPLY_CACHE)))  # the oldest
            _APPLY_CACHE[key] = fn
        return fn

    def _make_apply(self, wanted, context, jit) -> Callable:
        import jax
        import jax.numpy as jnp

        running: list[tuple[str, str]] = []  # (path, method) of the calls now running

        def track(next_fun, args, kwargs, context):
            running.append(("/".join(context.module.path), context.method_name))
            try:
                return next_fun(*args, **kwargs)
            finally:
                running.pop()

        def keep(module, method_name: str) -> bool:
            # asked as a call returns, after its own entry left `running`: an entry for
            # the same module still there is an outer call of it (super().__call__)
            path = "/".join(module.path)
            return method_name == "__call__" and bool(module.path) and \
                (wanted is None or path in wanted) and (path, "__call__") not in running

        training = self.training

        def run(variables, *inputs):
            import flax.linen as nn

            with ExitStack() as stack:
                stack.enter_context(jax.default_matmul_precision("highest"))
                stack.enter_context(nn.intercept_methods(track))
                if training:
                    stack.enter_context(training_mode())
                if context is not None:
                    stack.enter_context(context())
                out, state = self.module.apply(variables, *inputs, capture_intermediates=keep,
                                               mutable=True, **self.apply_kwargs)
            stats = state.get("batch_stats", {}) if training else {}
            return out, (state.get("intermediates", {}), stats)

        compiled = jax.jit(run) if jit else run

        def apply(variables, *inputs) -> dict[tuple[str, str], np.ndarray]:
            out, (tree, stats) = compiled(jax.tree_util.tree_map(jnp.asarray, variables),
                                          *[jnp.asarray(x) for x in inputs])
            outputs = _intermediates(jax.device_get(tree))
            for key, value in flatten_tree(jax.device_get(stats)).items():
                path, _, leaf = key.rpartition("/")
                outputs[(path, UPDATED_STATS.get(leaf, "." + leaf))] = np.asarray(value,
                                                                                  np.float32)
            outputs.update({("", suffix): array for suffix, array in
                            flatten_output(jax.device_get(out), _leaf)})
            return outputs

        return apply

    # ---- contexts for the zoo ------------------------------------------------------------
    @staticmethod
    def modules_changed(select: Callable) -> Callable:
        """Modules for which select(path, module) returns {attribute: value} run as clones
        with those attributes, on the variables they were given."""
        def factory():
            import flax.linen as nn

            def interceptor(next_fun, args, kwargs, context):
                module = context.module
                # module.path is empty for the clones run here: they are roots
                if context.method_name == "__call__" and module.path:
                    changes = select("/".join(module.path), module)
                    if changes is not None:
                        clone = module.clone(parent=None, **changes)
                        return clone.apply(dict(module.variables), *args, mutable=True,
                                           **kwargs)[0]
                return next_fun(*args, **kwargs)
            return nn.intercept_methods(interceptor)
        return factory

    @staticmethod
    def inputs_changed(path: str, change: Callable) -> Callable:
        """The module at `path` receives change(first positional argument)."""
        def factory():
            import flax.linen as nn

            def interceptor(next_fun, args, kwargs, context):
                if context.method_name == "__call__" and "/".join(context.module.path) == path:
                    return next_fun(change(args[0]), *args[1:], **kwargs)
                return next_fun(*args, **kwargs)
            return nn.intercept_methods(interceptor)
        return factory

    def function_calls(self, variables, inputs) -> list[FunctionCall]:
        """Every patchable function call of one apply, from an abstract trace."""
        def run(record, variables, *xs):
            with calls_patched(record):
                return self.module.apply(variables, *xs, mutable=True, **self.apply_kwargs)

        return traced_function_calls(run, variables, inputs)

    @staticmethod
    def calls_patched(on_call: Callable) -> Callable:
        return lambda: calls_patched(on_call)


UPDATED_STATS = {"mean": ".running_mean", "var": ".running_var"}  # torch's buffer names


@contextlib.contextmanager
def training_mode() -> Iterator[None]:
    """Every flax.linen BatchNorm called with use_running_average=False (whatever the port
    passes) and every Dropout deterministic, while the apply is traced."""
    import flax.linen as nn

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        # flax.linen's BatchNorm and Dropout, or a port's own module of that name and field
        # (flaxmodels has its own BatchNorm)
        names = {c.__name__ for c in type(module).__mro__}
        found = ("use_running_average", False) if "BatchNorm" in names and \
            hasattr(module, "use_running_average") else \
            ("deterministic", True) if "Dropout" in names and hasattr(module, "deterministic") \
            else None
        if context.method_name != "__call__" or found is None:
            return next_fun(*args, **kwargs)
        field, value = found
        # the bound module of this apply: its constructor value set aside for the call
        # (Flax refuses the field both at construction and at call time), then restored
        saved = getattr(module, field)
        object.__setattr__(module, field, None)
        try:
            return next_fun(*args[:1], **{**kwargs, field: value})
        finally:
            object.__setattr__(module, field, saved)

    with nn.intercept_methods(interceptor):
        yield


class _ScopeTracker:
    """A method interceptor keeping the stack of Flax modules now running; with `swap`
    (functions_patched's stand_in_for), a module's attributes holding a patchable function
    (`act: Callable = nn.relu6`, an nn.Sequential's layers) hold its stand-in while it runs."""

    def __init__(self, swap: Callable | None = None):
        self.stack: list[str] = [""]
        self.swap = swap

    def __call__(self, next_fun, args, kwargs, context):
        self.stack.append("/".join(context.module.path))
        saved = []
        if self.swap is not None:
            setup = getattr(context.module, "_try_setup", None)
            if setup is not None:
                setup()
            saved = swap_attributes([context.module], self.swap)
        try:
            return next_fun(*args, **kwargs)
        finally:
            restore_attributes(saved)
            self.stack.pop()


def swap_attributes(modules, stand_in_for: Callable) -> list:
    """Each attribute of `modules` that stand_in_for replaces is set to its stand-in
    (object.__setattr__: Linen modules are frozen); what was there is returned."""
    saved = []
    for module in modules:
        for name, value in list(vars(module).items()):
            if name.startswith("_") or name in ("parent", "scope"):
                continue
            replacement = stand_in_for(value)
            if replacement is not None:
                saved.append((module, name, value))
                object.__setattr__(module, name, replacement)
    return saved


def restore_attributes(saved: list) -> None:
    for module, name, value in reversed(saved):
        object.__setattr__(module, name, value)


@contextlib.contextmanager
def functions_patched(on_call: Callable, current_scope: Callable[[], str]) -> Iterator[None]:
    """Stand-ins for PATCHABLE functions: on_call(function, original, scope, index, args,
    kwargs) computes each call, scope being current_scope() (the innermost module running,
    as the frontend knows it) and index counting calls of the function in that scope.
    Restored on exit. Yields stand_in_for(value): the stand-in of a patchable function
    held as a value (the function, a functools.partial of it, a list or tuple holding
    them), else None: a port that bound the function when it was built (`self.act =
    nnx.relu6`) calls what its attribute holds, which the frontend swaps (swap_attributes)."""
    counts: dict[tuple[str, str], int] = {}
    saved = []
    stand_ins: dict[int, Callable] = {}
    for function, namespaces in PATCHABLE.items():
        modules = [importlib.import_module(n) for n in namespaces]
        original = getattr(modules[0], function)

        def stand_in(*args, _function=function, _original=original, **kwargs):
            scope = current_scope()
            counts[(_function, scope)] = index = counts.get((_function, scope), 0) + 1
            return on_call(_function, _original, scope, index, args, kwargs)

        stand_ins[id(original)] = stand_in
        for module in modules:
            if getattr(module, function, None) is original:
                saved.append((module, function, original))
                setattr(module, function, stand_in)

    def stand_in_for(value):
        if callable(value) and id(value) in stand_ins:
            return stand_ins[id(value)]
        if isinstance(value, functools.partial) and id(value.func) in stand_ins:
            return functools.partial(stand_ins[id(value.func)], *value.args, **value.keywords)
        if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
            items = [stand_in_for(v) for v in value]
            if any(i is not None for i in items):
                return type(value)(v if i is None else i for v, i in zip(value, items))
        return None

    try:
        yield stand_in_for
    finally:
        for module, function, original in saved:
            setattr(module, function, original)


@contextlib.contextmanager
def calls_patched(on_call: Callable) -> Iterator[None]:
    """functions_patched, each call attributed to the innermost Linen module running."""
    import flax.linen as nn

    tracker = _ScopeTracker()
    with functions_patched(on_call, lambda: tracker.stack[-1]) as stand_in_for:
        tracker.swap = stand_in_for
        with nn.intercept_methods(tracker):
            yield
