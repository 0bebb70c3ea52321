"""Gradient parity for any model: d(loss)/d(parameter) in both frameworks, per tensor.

The loss is the user's (torch_loss(outputs) and flax_loss(outputs), each given its
own framework's outputs) or, by default, the sum of every output leaf (layout does
not change a sum). JAX gradients are taken with respect to the `params` collection
(other collections, e.g. batch_stats, are held fixed) and mapped back to torch names
and layouts by the converter's rules (weights.rules.to_torch), so each row is one
torch parameter. A row passes by the one rule of parity/engine/tolerance.py:
max|jax - torch| <= tol * max(1, max|torch|). Both sides run in float32 in this
process; the torch side finishes first.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from parity.engine.tolerance import MODEL_GRAD_TOL, compare
from weights.rules import to_torch
from weights.trees import flatten_tree


@dataclasses.dataclass(frozen=True)
class GradientRow:
    torch_name: str
    flax_name: str
    kind: str
    shape: tuple[int, ...]
    max_abs: float
    scale: float
    rel_to_scale: float
    passed: bool

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["shape"] = list(self.shape)
        return out


@dataclasses.dataclass
class GradientComparison:
    rows: list[GradientRow]
    tol: float
    loss_torch: float
    loss_jax: float

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def worst(self) -> GradientRow | None:
        return max(self.rows, key=lambda r: r.rel_to_scale) if self.rows else None

    def summary(self) -> str:
        w = self.worst
        verdict = "PASS" if self.passed else "DIVERGES"
        where = f"; worst {w.torch_name} at {w.rel_to_scale:.2e}" if w else ""
        return (f"gradients {verdict}: {len(self.rows)} parameters within {self.tol:.0e} "
                f"relative to scale{where}; loss torch {self.loss_torch:.8g}, "
                f"JAX {self.loss_jax:.8g}")


def _sum_leaves(value, total=None):
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            total = _sum_leaves(item, total)
        return total
    part = value.sum()
    return part if total is None else total + part


def model_gradient_parity(torch_model, flax_module, variables: dict, inputs, plan,
                          torch_loss: Callable | None = None, flax_loss: Callable | None = None,
                          tol: float = MODEL_GRAD_TOL, apply_kwargs: dict | None = None
                          ) -> GradientComparison:
    """Per-parameter gradients of `loss` (default: the sum of all outputs), compared per
    torch parameter; `plan` is the converter's plan (weights.rules.ConversionPlan)."""
    import jax
    import jax.numpy as jnp
    import torch

    from parity.engine.api import as_input_tuple, flax_inputs
    from parity.engine.hooks import torch_threads

    xs = as_input_tuple(inputs)
    torch_loss = torch_loss or _sum_leaves
    flax_loss = flax_loss or _sum_leaves
    torch_model.zero_grad(set_to_none=True)
    with torch_threads():
        loss_t = torch_loss(torch_model(*[torch.from_numpy(np.ascontiguousarray(x)) for x in xs]))
        loss_t.backward()
    grads_t = {n: (np.zeros(tuple(p.shape), np.float32) if p.grad is None
                   else p.grad.detach().numpy().copy())
               for n, p in torch_model.named_parameters()}
    torch_model.zero_grad(set_to_none=True)

    others = {k: v for k, v in variables.items() if k != "params"}
    fx = [jnp.asarray(x) for x in flax_inputs(xs)]

    def loss_of(params):
        # true float32 ("highest"), scoped to this trace: JAX's global setting is left alone
        with jax.default_matmul_precision("highest"):
            return flax_loss(flax_module.apply({"params": params, **others}, *fx,
                                               **(apply_kwargs or {})))

    loss_j, grads = jax.jit(jax.value_and_grad(loss_of))(variables["params"])
    flat = flatten_tree({"params": jax.device_get(grads)})
    rows = []
    for rule in plan.rules:
        if rule.collection != "params" or rule.torch_name not in grads_t:
            continue
        key = "/".join(["params", *filter(None, rule.flax_path.split("/")), rule.leaf])
        got = to_torch(rule.kind, np.asarray(flat[key]), rule.torch_shape)
        ref = grads_t[rule.torch_name]
        c = compare(got, ref, tol)
        rows.append(GradientRow(rule.torch_name, key, rule.kind, tuple(ref.shape), c.max_abs,
                                c.scale, c.rel_to_scale, c.passed))
    return GradientComparison(rows, tol, float(loss_t.detach()), float(loss_j))
