"""The NNX frontend (parity/engine/frontend.py's interface for flax.nnx ports).

Paths: NNX module paths joined by dots read like torch names (`blocks.0.conv`; an
nnx.List index is a path element, an nnx.Sequential adds `layers.`), so the rename rule
is the identity, then `a.0` -> `a.layers.0` (weights.trees.nnx_path_candidates).

Variables: the weights are the model's nnx.Param (collection 'params') and nnx.BatchStat
('batch_stats') variables, held as {collection: {module path: {leaf: array}}}, flat keys
'params/blocks.0.conv/kernel' (the converter's keys for these paths). Other variables
(RNG state, caches) stay as the model holds them.

Capture: there is no NNX method interceptor. While an apply is traced, `__call__` is
patched along the MRO of every class nnx.iter_modules finds (so a subclass that inherits
`__call__` is captured), each output logged under the module's path as the call
finishes (finish order), and restored in `finally`. A call of a module already running
(a subclass's `__call__` calling `super().__call__`) is not logged twice. The root's
entry is what the outermost call returns. The apply is a plain `jax.jit` of a pure
function: the graph is split once, and each trace merges it with the given variables,
so the model passed in is never changed. Traced at "highest" matmul precision (true
float32), as for Linen.

The zoo's contexts change only the copy of the model a trace merged: attributes set on
its modules (the module run with other attributes), a module's input changed, or
stand-ins for the functions ports call (gelu, leaky_relu, jax.image.resize), each call
attributed to the innermost NNX module running it.
"""

from __future__ import annotations

import contextlib
import functools
from contextlib import ExitStack
from typing import Callable, Iterator

import numpy as np

from parity.engine.frontend import (Census, FunctionCall, call_suffix, flatten_output,
                                    flax_inputs, traced_function_calls, VariableTree)
from parity.engine.linen import functions_patched, restore_attributes, swap_attributes
from weights.trees import flatten_tree, nest_tree, nnx_path_candidates

COLLECTIONS = (("params", "Param"), ("batch_stats", "BatchStat"))


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _leaf(value) -> np.ndarray | None:
    if hasattr(value, "shape") and hasattr(value, "dtype") and \
            np.issubdtype(np.dtype(value.dtype), np.floating):
        return np.asarray(value, np.float32)
    return None


def _arrays_only(value):
    """An output pytree with every leaf that is not a floating array dropped (None)."""
    if isinstance(value, dict):
        return {str(k): _arrays_only(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_arrays_only(v) for v in value]
    if hasattr(value, "shape") and hasattr(value, "dtype") and \
            np.issubdtype(np.dtype(value.dtype), np.floating):
        return value
    return None


class _Run:
    """What one traced apply records: module paths by object, the stack of modules now
    running, every output in finish order, and the zoo's changes for this run."""

    def __init__(self, model, wanted: frozenset[str] | None):
        from flax import nnx

        self.modules = {_dotted(p): m for p, m in nnx.iter_modules(model)}
        self.paths = {id(m): p for p, m in self.modules.items()}
        self.root = id(model)
        self.wanted = wanted
        self.running: set[int] = set()
        self.stack: list[str] = [""]
        self.entered: list[str] = []
        self.counts: dict[str, int] = {}
        self.outputs: list[tuple[str, int, object]] = []
        self.input_changes: dict[str, Callable] = {}


_RUNS: list[_Run] = []  # the runs in progress (innermost last)


def _logging_call(original: Callable) -> Callable:
    @functools.wraps(original)
    def call(self, *args, **kwargs):
        run = _RUNS[-1] if _RUNS else None
        key = id(self)
        if run is None or key not in run.paths or key in run.running:
            return original(self, *args, **kwargs)
        path = run.paths[key]
        if path in run.input_changes and args:
            args = (run.input_changes[path](args[0]), *args[1:])
        run.running.add(key)
        run.stack.append(path)
        run.entered.append(path)
        try:
            out = original(self, *args, **kwargs)
        finally:
            run.stack.pop()
            run.running.discard(key)
        if key != run.root:
            run.counts[path] = run.counts.get(path, 0) + 1
            if run.wanted is None or path in run.wanted:
                run.outputs.append((path, run.counts[path], out))
        return out
    return call


@contextlib.contextmanager
def captured(model, wanted: frozenset[str] | None = None) -> Iterator[_Run]:
    """Inside: every call of `model`'s modules is logged in the _Run yielded."""
    from flax import nnx

    run = _Run(model, wanted)
    patched: list[tuple[type, object]] = []
    seen: set[type] = set()
    for _, module in nnx.iter_modules(model):
        for cls in type(module).__mro__:
            if cls is object or cls in seen or "__call__" not in vars(cls):
                continue
            seen.add(cls)
            original = vars(cls)["__call__"]
            patched.append((cls, original))
            setattr(cls, "__call__", _logging_call(original))
    _RUNS.append(run)
    try:
        yield run
    finally:
        _RUNS.remove(run)
        for cls, original in reversed(patched):
            setattr(cls, "__call__", original)


def _current_scope() -> str:
    return _RUNS[-1].stack[-1] if _RUNS else ""


class NNXFrontend(VariableTree):
    kind = "nnx"

    def __init__(self, module, apply_kwargs: dict | None = None):
        from flax import nnx

        self.module = module
        self.apply_kwargs = dict(apply_kwargs or {})
        self.graphdef, state = nnx.split(module)
        self.state_items = list(nnx.to_flat_state(state))
        modules = {_dotted(p) for p, _ in nnx.iter_modules(module)}
        self.keys: dict[tuple, str] = {}       # variable path -> flat key
        for path, var in self.state_items:
            collection = next((c for c, kind in COLLECTIONS
                               if isinstance(var, getattr(nnx, kind))), None)
            if collection is None:
                continue
            owner = next(i for i in range(len(path) - 1, -1, -1)
                         if _dotted(path[:i]) in modules)
            self.keys[path] = "/".join(filter(None, (collection, _dotted(path[:owner]),
                                                     _dotted(path[owner:]))))
        self._compiled: dict = {}

    # ---- names and variables -----------------------------------------------------------
    path_candidates = staticmethod(nnx_path_candidates)

    def own_variables(self) -> dict:
        """The model's own weights in this frontend's variables layout (numpy copies)."""
        return nest_tree({key: np.array(var[...], copy=True) for path, var in
                          self.state_items if (key := self.keys.get(path)) is not None})

    def variables_named(self, named: dict[str, np.ndarray], what: str = "weights") -> dict:
        """Variables from weights under dotted names (`feat1.conv.kernel`, what an NNX
        model's safetensors file holds), strictly: missing, unexpected and misshapen
        tensors are refused together, sorted (weights.nnx_state)."""
        from weights.state_dict import check_names_and_shapes

        keys = {_dotted(path): key for path, key in self.keys.items()}
        shapes = {_dotted(path): tuple(var.shape) for path, var in self.state_items
                  if path in self.keys}
        check_names_and_shapes(named, shapes, f"{what} do not fit the NNX model")
        return nest_tree({keys[name]: np.asarray(value, np.float32)
                          for name, value in named.items()})

    def model_with(self, variables):
        """A copy of the model holding `variables`. A weight they lack (a mutant that
        removes one, e.g. a bias the mutant's module no longer uses) is zero: the
        strict checks are made where variables are made (conversion, fixtures)."""
        import jax.numpy as jnp
        from flax import nnx

        flat = flatten_tree(variables)
        items = []
        for path, var in self.state_items:
            key = self.keys.get(path)
            if key is not None:
                var = var.replace(flat[key] if key in flat else
                                  jnp.zeros(var.shape, var.dtype))
            items.append((path, var))
        return nnx.merge(self.graphdef, nnx.from_flat_state(items))

    def apply(self, variables, *inputs):
        return self.model_with(variables)(*inputs, **self.apply_kwargs)

    def census(self, inputs) -> Census:
        import jax

        entered: list[str] = []

        def run(variables, *xs):
            model = self.model_with(variables)
            with captured(model) as log:
                out = model(*xs, **self.apply_kwargs)
            entered.extend(log.entered)
            return _arrays_only(out)

        # shapes only: the port may be abstract (nnx.eval_shape), its weights given later
        abstract = nest_tree({key: jax.ShapeDtypeStruct(var.shape, var.dtype) for path, var
                              in self.state_items if (key := self.keys.get(path)) is not None})
        jax.eval_shape(run, abstract, *[jax.ShapeDtypeStruct(x.shape, np.float32)
                                        for x in flax_inputs(inputs)])
        from flax import nnx

        paths = {_dotted(p): m for p, m in nnx.iter_modules(self.module)}
        order = list(dict.fromkeys(p for p in entered if p in paths))
        modules = {p: paths[p] for p in order + [p for p in paths if p not in order]}
        shapes = {self.keys[path]: tuple(var.shape) for path, var in self.state_items
                  if path in self.keys}
        return Census(modules, shapes, frozenset(order) | {""})

    # ---- capture -------------------------------------------------------------------------
    def make_apply(self, wanted: frozenset[str] | None = None, context: Callable | None = None,
                   jit: bool = True) -> Callable:
        """fn(variables, *inputs) -> {(path, suffix): float32 output} (see the module note)."""
        import jax
        import jax.numpy as jnp

        key = (wanted, jit)
        if context is None and key in self._compiled:
            return self._compiled[key]

        def run(variables, *inputs):
            model = self.model_with(variables)
            with captured(model, wanted) as log, ExitStack() as stack:
                stack.enter_context(jax.default_matmul_precision("highest"))
                if context is not None:
                    stack.enter_context(context())
                out = model(*inputs, **self.apply_kwargs)
            # zero-padded finish index first: the dict comes back sorted in finish order
            logged = {f"{i:06d}\n{path}\n{call}": _arrays_only(value)
                      for i, (path, call, value) in enumerate(log.outputs)}
            return _arrays_only(out), logged

        compiled = jax.jit(run) if jit else run

        def apply(variables, *inputs) -> dict[tuple[str, str], np.ndarray]:
            out, logged = compiled(jax.tree_util.tree_map(jnp.asarray, variables),
                                   *[jnp.asarray(x) for x in inputs])
            outputs: dict[tuple[str, str], np.ndarray] = {}
            for name in sorted(logged):
                _, path, call = name.split("\n")
                for suffix, array in flatten_output(jax.device_get(logged[name]), _leaf):
                    outputs[(path, suffix + call_suffix(int(call)))] = array
            outputs.update({("", suffix): array for suffix, array in
                            flatten_output(jax.device_get(out), _leaf)})
            return outputs

        if context is None:
            self._compiled[key] = apply
        return apply

    # ---- contexts for the zoo ------------------------------------------------------------
    @staticmethod
    def modules_changed(select: Callable) -> Callable:
        """Modules for which select(path, module) returns {attribute: value} run with
        those attributes (set on the copy of the model the trace merged)."""
        @contextlib.contextmanager
        def factory():
            run = _RUNS[-1]
            saved = []
            for path, module in run.modules.items():
                if not path:
                    continue
                changes = select(path, module)
                for name, value in (changes or {}).items():
                    saved.append((module, name, getattr(module, name)))
                    setattr(module, name, value)
            try:
                yield
            finally:
                for module, name, value in reversed(saved):
                    setattr(module, name, value)
        return factory

    @staticmethod
    def inputs_changed(path: str, change: Callable) -> Callable:
        """The module at `path` receives change(first positional argument)."""
        @contextlib.contextmanager
        def factory():
            run = _RUNS[-1]
            run.input_changes[path] = change
            try:
                yield
            finally:
                run.input_changes.pop(path, None)
        return factory

    def function_calls(self, variables, inputs) -> list[FunctionCall]:
        """Every patchable function call of one apply, from an abstract trace."""
        def run(record, variables, *xs):
            model = self.model_with(variables)
            with captured(model), _calls_patched(record):
                return _arrays_only(model(*xs, **self.apply_kwargs))

        return traced_function_calls(run, variables, inputs)

    @staticmethod
    def calls_patched(on_call: Callable) -> Callable:
        return lambda: _calls_patched(on_call)


@contextlib.contextmanager
def _calls_patched(on_call: Callable) -> Iterator[None]:
    """functions_patched, each call attributed to the innermost NNX module running; the
    functions the merged copy's modules hold as attributes (`self.act = nnx.relu6`, an
    nnx.Sequential's layers) are swapped for their stand-ins too."""
    with functions_patched(on_call, _current_scope) as stand_in_for:
        modules = _RUNS[-1].modules.values() if _RUNS else ()
        saved = swap_attributes(modules, stand_in_for)
        try:
            yield
        finally:
            restore_attributes(saved)
