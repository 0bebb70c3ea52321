"""Gradient parity for any model: d(loss)/d(parameter) in both frameworks, per tensor.

The loss is the user's (torch_loss(outputs) and flax_loss(outputs), each given its own
framework's outputs) or, by default, the sum of every output leaf (layout does not
change a sum). JAX gradients are taken with respect to the trainable parameters (other
collections, e.g. batch_stats, are held fixed) and mapped back to torch names and layouts
by the converter's rules (weights.rules.to_torch), so each row is one torch parameter.
The torch side always finishes first.

Two precisions, two rules (limits in parity/engine/tolerance.py):
- float32 (default): both sides in this process, each row by the forward rule
  max|jax - torch| <= tol * max(1, max|torch|) (MODEL_GRAD_TOL).
- float64 (`float64=True`): the check that both compute the same derivative, per tensor
  by relative L2 norm (GRAD_RTOL): only float64 rounding is left, so any porting error
  fails. JAX runs in float64 in a worker subprocess (core.workers: torch and float64 JAX
  with gradients in one process have crashed inside XLA); the Flax model and loss travel
  to it pickled (module-level functions and Linen modules pickle by reference). The
  float32 gradients are then reported, not judged: inputs within rounding of a
  PReLU/ReLU kink take different branches in the two frameworks.
- `adam` (a recipe with lr, beta1, beta2, eps): one Adam step, torch.optim.Adam vs
  optax.adam in float32 from identical parameters, given (a) the same float32 gradients
  (torch's) and (b) each side's own float64 gradients rounded to float32, both judged
  by relative L2 (ADAM_STEP_RTOL); (c) each side's own float32 gradients, reported.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from parity.engine.frontend import as_input_tuple, flax_inputs, frontend_for
from parity.engine.tolerance import ADAM_STEP_RTOL, GRAD_RTOL, MODEL_GRAD_TOL, measure, relative_l2
from weights.rules import to_flax, to_torch

WORKER_FLAG = "--float64-worker"
WORKER_TIMEOUT_S = 600
RELATIVE_L2, SCALE = "relative L2", "relative to scale"


@dataclasses.dataclass(frozen=True)
class TensorRow:
    torch_name: str
    flax_name: str
    kind: str
    shape: tuple[int, ...]
    rel_l2: float
    rel_to_scale: float
    reference_norm: float

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["shape"] = list(self.shape)
        for key in ("rel_l2", "rel_to_scale"):
            out[key] = out[key] if np.isfinite(out[key]) else None
        return out


def _error(row: TensorRow, rule: str) -> float:
    return row.rel_l2 if rule == RELATIVE_L2 else row.rel_to_scale


def _worst(rows: list[TensorRow], rule: str) -> TensorRow:
    # a NaN is the worst (max() alone passes over a NaN that is not first)
    return max(rows, key=lambda r: math.inf if math.isnan(_error(r, rule)) else _error(r, rule))


def _within(rows: list[TensorRow], rule: str, tol: float) -> bool:
    # `not a <= tol` rather than `a > tol`: a NaN error fails
    return all((r.rel_l2 if rule == RELATIVE_L2 else r.rel_to_scale) <= tol for r in rows)


@dataclasses.dataclass
class GradientParity:
    precision: str                        # "float64" or "float32": the judged gradients
    rule: str                             # RELATIVE_L2 or SCALE
    tol: float
    loss_name: str
    loss_torch: float
    loss_jax: float
    rows: list[TensorRow]                 # judged
    float32_rows: list[TensorRow] | None = None       # reported only (float64 runs)
    adam: dict[str, list[TensorRow]] = dataclasses.field(default_factory=dict)
    adam_tol: float = ADAM_STEP_RTOL
    ADAM_JUDGED = ("same float32 gradients", "own float64 gradients")

    @property
    def passed(self) -> bool:
        """Every judged tensor within its limit, at least one compared, both losses finite."""
        finite = math.isfinite(self.loss_torch) and math.isfinite(self.loss_jax)
        return finite and bool(self.rows) and _within(self.rows, self.rule, self.tol) and all(
            _within(rows, RELATIVE_L2, self.adam_tol) for label, rows in self.adam.items()
            if label in self.ADAM_JUDGED)

    def summary_lines(self) -> list[str]:
        lines = [f"loss: {self.loss_name}: torch {self.loss_torch:.12g}, JAX "
                 f"{self.loss_jax:.12g} ({self.precision})"]
        checks = [(f"gradients, {self.precision}", self.rows, self.rule, self.tol),
                  ("gradients, float32 (reported)", self.float32_rows, RELATIVE_L2, None)]
        checks += [(f"Adam step, {label}" + ("" if label in self.ADAM_JUDGED else " (reported)"),
                    rows, RELATIVE_L2, self.adam_tol if label in self.ADAM_JUDGED else None)
                   for label, rows in self.adam.items()]
        for label, rows, rule, tol in checks:
            if not rows:
                continue
            w = _worst(rows, rule)
            value = w.rel_l2 if rule == RELATIVE_L2 else w.rel_to_scale
            tail = "" if tol is None else \
                f" (limit {tol:.0e}): {'pass' if _within(rows, rule, tol) else 'FAIL'}"
            lines.append(f"{label}: worst {rule} {value:.2e} at {w.torch_name}, "
                         f"{len(rows)} tensors{tail}")
        return lines

    def summary(self) -> str:
        return f"gradients {'PASS' if self.passed else 'DIVERGE'}: " + \
            "; ".join(self.summary_lines()[1:])

    def as_dict(self) -> dict:
        def rows(items):
            return None if items is None else [r.as_dict() for r in items]
        return {"passed": self.passed, "precision": self.precision, "rule": self.rule,
                "tolerance": self.tol, "loss": self.loss_name,
                "loss_values": {"torch": self.loss_torch, "jax": self.loss_jax},
                "rows": rows(self.rows), "float32_rows": rows(self.float32_rows),
                "adam_tolerance": self.adam_tol,
                "adam": {label: rows(items) for label, items in self.adam.items()}}


def sum_of_outputs(value, total=None):
    """The default loss: the sum of every output leaf."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            total = sum_of_outputs(item, total)
        return total
    part = value.sum()
    return part if total is None else total + part


# ---- the two sides ------------------------------------------------------------------------
def torch_gradients(torch_model, inputs, loss: Callable, float64: bool = False
                    ) -> tuple[float, dict[str, np.ndarray]]:
    import torch

    from parity.engine.torch_side import torch_threads

    model = copy.deepcopy(torch_model).double() if float64 else torch_model
    dtype = torch.float64 if float64 else torch.float32
    model.zero_grad(set_to_none=True)
    with torch_threads():
        value = loss(model(*[torch.from_numpy(np.ascontiguousarray(x)).to(dtype)
                             for x in inputs]))
        value.backward()
    grads = {n: (np.zeros(tuple(p.shape)) if p.grad is None else p.grad.detach().numpy().copy())
             for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return float(value.detach()), grads


def jax_gradients(frontend, variables, inputs, loss: Callable,
                  context: Callable | None = None) -> tuple[float, dict[str, np.ndarray]]:
    """Loss and gradients under the frontend's flat keys, in the arrays' dtype (float64
    needs jax_enable_x64: the worker); inputs in the Flax layout. `context`, if given,
    is a function returning a context manager the forward is traced in (e.g. a Flax
    method interceptor that swaps in the layers training runs)."""
    import contextlib

    import jax
    import jax.numpy as jnp

    params, rest = frontend.split(jax.tree_util.tree_map(jnp.asarray, variables))
    xs = [jnp.asarray(x) for x in inputs]

    def loss_of(p):
        # true float32 ("highest"), scoped to this trace: JAX's global setting is left alone
        with jax.default_matmul_precision("highest"), (context or contextlib.nullcontext)():
            return loss(frontend.apply(frontend.merge(p, rest), *xs))

    value, grads = jax.jit(jax.value_and_grad(loss_of))(params)
    flat = frontend.flat(frontend.merge(jax.device_get(grads), {}))
    return float(value), {k: np.asarray(v) for k, v in flat.items()}


def _float64_worker(in_path: str, out_path: str) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)  # this process only
    with open(in_path, "rb") as fh:  # written by gradient_parity in this toolkit's own folder
        flax_model, apply_kwargs, loss, context, variables, inputs = pickle.load(fh)
    value, grads = jax_gradients(frontend_for(flax_model, apply_kwargs), variables, inputs, loss,
                                 context)
    np.savez(out_path, loss=np.float64(value), **{f"grad:{k}": v for k, v in grads.items()})
    return 0


# ---- Adam --------------------------------------------------------------------------------
def torch_adam_step(params: dict[str, np.ndarray], grads: dict[str, np.ndarray], recipe
                    ) -> dict[str, np.ndarray]:
    """One torch.optim.Adam step in float32 (torch names and layouts)."""
    import torch

    tensors = {k: torch.nn.Parameter(torch.from_numpy(np.array(v, np.float32)))
               for k, v in params.items()}
    for name, p in tensors.items():
        p.grad = torch.from_numpy(np.array(grads[name], np.float32))
    opt = torch.optim.Adam(list(tensors.values()), lr=recipe.lr,
                           betas=(recipe.beta1, recipe.beta2), eps=recipe.eps)
    opt.step()
    return {k: p.detach().numpy().copy() for k, p in tensors.items()}


@functools.lru_cache(maxsize=8)
def _optax_adam_step(lr: float, beta1: float, beta2: float, eps: float) -> Callable:
    import jax
    import optax

    tx = optax.adam(lr, b1=beta1, b2=beta2, eps=eps)

    def step(params, grads):
        updates, _ = tx.update(grads, tx.init(params), params)
        return optax.apply_updates(params, updates)
    # compiled once per hyper-parameters (~2 s); eagerly, the first step compiled every
    # op per shape (~9 s)
    return jax.jit(step)


def optax_adam_step(params: dict[str, np.ndarray], grads: dict[str, np.ndarray], recipe
                    ) -> dict[str, np.ndarray]:
    """One optax.adam step in float32 on flat arrays (any one naming)."""
    p = {k: np.asarray(v, np.float32) for k, v in params.items()}
    step = _optax_adam_step(recipe.lr, recipe.beta1, recipe.beta2, recipe.eps)
    return {k: np.asarray(v) for k, v in
            step(p, {k: np.asarray(grads[k], np.float32) for k in p}).items()}


# ---- comparing ---------------------------------------------------------------------------
def _rows(rules, torch_side: dict, jax_side: dict, tol: float,
          uncovered: tuple[tuple[str, tuple], ...] = ()) -> list[TensorRow]:
    """One row per converted parameter; one failing (NaN) row per torch parameter the
    conversion plan does not cover, so that no gradient goes unjudged."""
    rows = [TensorRow(name, "-", "no Flax counterpart", shape, math.nan, math.nan, math.nan)
            for name, shape in uncovered]
    for rule in rules:
        ref = np.asarray(torch_side[rule.torch_name], np.float64)
        got = to_torch(rule.kind, np.asarray(jax_side[rule.key]), rule.torch_shape)
        c = measure(got, ref, tol)
        rows.append(TensorRow(rule.torch_name, rule.key, rule.kind, tuple(ref.shape),
                              relative_l2(got, ref), c.rel_to_scale, float(np.linalg.norm(ref))))
    return rows


def gradient_parity(torch_model, flax_model, variables, inputs, *, plan,
                    torch_loss: Callable | None = None, flax_loss: Callable | None = None,
                    loss_name: str = "sum of all outputs", apply_kwargs: dict | None = None,
                    tol: float | None = None, float64: bool = False, adam=None,
                    flax_context: Callable | None = None) -> GradientParity:
    """Per-parameter gradients of the loss, per torch parameter (see the module note);
    `plan` is the converter's plan (weights.rules.ConversionPlan). `flax_context`: a
    module-level function returning a context manager the JAX forward is traced in (it
    travels pickled to the float64 worker), e.g. the layers a trainer swaps in."""
    from core.workers import finish_worker, start_worker

    xs = as_input_tuple(inputs)
    fx = flax_inputs(xs)
    frontend = frontend_for(flax_model, apply_kwargs)
    torch_loss, flax_loss = torch_loss or sum_of_outputs, flax_loss or sum_of_outputs
    names = dict(torch_model.named_parameters())
    rules = [r for r in plan.rules if r.collection == "params" and r.torch_name in names]
    covered = {r.torch_name for r in rules}
    uncovered = tuple((n, tuple(p.shape)) for n, p in names.items() if n not in covered)
    loss_t32, grads_t32 = torch_gradients(torch_model, xs, torch_loss)
    if not float64:
        loss_j, grads_j = jax_gradients(frontend, variables, fx, flax_loss, flax_context)
        tol = MODEL_GRAD_TOL if tol is None else tol
        return GradientParity("float32", SCALE, tol, loss_name, loss_t32, loss_j,
                              _rows(rules, grads_t32, grads_j, tol, uncovered))
    loss_t64, grads_t64 = torch_gradients(torch_model, xs, torch_loss, float64=True)
    tol = GRAD_RTOL if tol is None else tol
    with tempfile.TemporaryDirectory(prefix="parity_grad64_") as tmp:
        request, result = Path(tmp) / "in.pkl", Path(tmp) / "out.npz"
        as64 = frontend.nested({k: np.asarray(v, np.float64)
                                for k, v in frontend.flat(variables).items()})
        request.write_bytes(pickle.dumps((flax_model, frontend.apply_kwargs, flax_loss,
                                          flax_context, as64,
                                          [np.asarray(x, np.float64) for x in fx])))
        worker = start_worker("parity.grads.model_gradients", WORKER_FLAG, request, result)
        try:  # float32 JAX work in this process while the worker runs
            _, grads_j32 = jax_gradients(frontend, variables, fx, flax_loss, flax_context)
        finally:
            finish_worker(worker, "float64 JAX gradient", timeout=WORKER_TIMEOUT_S)
        with np.load(result) as out:
            loss_j64 = float(out["loss"])
            grads_j64 = {k[len("grad:"):]: out[k] for k in out.files if k.startswith("grad:")}
    report = GradientParity("float64", RELATIVE_L2, tol, loss_name, loss_t64, loss_j64,
                            _rows(rules, grads_t64, grads_j64, tol, uncovered),
                            _rows(rules, grads_t32, grads_j32, tol, uncovered))
    if adam is not None:
        start = {r.torch_name: names[r.torch_name].detach().numpy() for r in rules}
        flax_start = {r.key: to_flax(r.kind, start[r.torch_name]) for r in rules}
        as_flax = {r.key: to_flax(r.kind, grads_t32[r.torch_name]) for r in rules}
        own64 = {r.torch_name: grads_t64[r.torch_name] for r in rules}
        report.adam = {
            "same float32 gradients": _rows(rules, torch_adam_step(start, grads_t32, adam),
                                            optax_adam_step(flax_start, as_flax, adam), tol),
            "own float64 gradients": _rows(rules, torch_adam_step(start, own64, adam),
                                           optax_adam_step(flax_start, grads_j64, adam), tol),
            "own float32 gradients": _rows(rules, torch_adam_step(start, grads_t32, adam),
                                           optax_adam_step(flax_start, grads_j32, adam), tol)}
    return report


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == WORKER_FLAG:
        raise SystemExit(_float64_worker(sys.argv[2], sys.argv[3]))
    print(f"usage: python -m parity.grads.model_gradients {WORKER_FLAG} IN.pkl OUT.npz "
          "(internal: the float64 JAX side of gradient_parity)", file=sys.stderr)
    raise SystemExit(2)
