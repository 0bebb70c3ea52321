"""The verdict of a training parity run: every judged figure, its limit, and which checks fail.

`TrainingParityResult` holds what parity.grads.training_parity measured (both sides'
losses, per-tensor errors of the final weights, of the updates and of Adam's moments)
and judges it (see that module's docstring for the checks; parity/engine/tolerance.py
for each limit and why). It fails safe: a NaN or an infinity anywhere, a step or a
tensor left uncompared, or an empty comparison is a failure, whatever the other
figures say (`worst_of` counts a NaN as the worst value, which max() alone does not).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from core.atomic_files import save_figure_atomic
from core.config import DLNConfig
from core.report_files import write_report
from parity.engine.tolerance import (DATA_PARALLEL_LOSS_RTOL, NNX_VS_LINEN_ATOL,
                                     TRAIN_FIRST_LOSS_RTOL,
                                     TRAIN_LOSS_RTOL, TRAIN_MOMENTS_RTOL,
                                     TRAIN_SCALAR_FINAL_RTOL, TRAIN_SCALAR_MOMENTS_RTOL,
                                     TRAIN_UPDATE_FLIP_LR, TRAIN_UPDATE_RTOL,
                                     TRAIN_UPDATE_TOTAL_RTOL, TRAIN_WEIGHTS_RTOL, compare)
from parity.grads.training_zoo import FINITE, FIRST_LOSS, LOSSES, MOMENTS, UPDATES, WEIGHTS

LOSS_STEPS = 20
DATA_PARALLEL_STEPS = 3
DATA_PARALLEL = "data parallel"


def worst_of(table: dict[str, float]) -> tuple[str, float]:
    """(name, value) of the largest value; a NaN counts as larger than anything (max()
    alone would pass over it), an empty table as NaN."""
    if not table:
        return "(nothing compared)", float("nan")
    name = max(table, key=lambda k: math.inf if math.isnan(table[k]) else table[k])
    return name, table[name]


def _within(value: float, limit: float) -> bool:
    return bool(value <= limit)  # False for NaN


@dataclasses.dataclass
class TrainingParityResult:
    config: DLNConfig
    steps: int
    batch: int
    patch: int
    lr: float
    losses_torch: list[float]
    losses_jax: list[float]
    weight_rel: dict[str, float]  # per tensor, ||w_jax - w_torch|| / ||w_torch||
    update_rel: dict[str, float]  # per tensor, the same for (final - initial)
    # JAX on N host devices (data parallel), first DATA_PARALLEL_STEPS steps; [] if not run
    losses_jax_data_parallel: list[float] = dataclasses.field(default_factory=list)
    data_parallel_devices: int = 0
    # per tensor: update_rel without its largest TRAIN_UPDATE_FLIP_FRACTION of element
    # differences, and the largest element difference of the update in units of lr
    update_rel_trimmed: dict[str, float] = dataclasses.field(default_factory=dict)
    update_max_in_lr: dict[str, float] = dataclasses.field(default_factory=dict)
    # every tensor with more than one element together, trimmed the same way
    update_total_trimmed: float = 0.0
    scalars: tuple[str, ...] = ()     # one-element tensors (held by their final value)
    rates: list[float] = dataclasses.field(default_factory=list)  # per step, both sides
    finite: bool = True               # every loss and final weight of both sides finite
    defect: str | None = None         # parity.grads.training_zoo defect on the JAX side
    # per tensor: the larger relative L2 of Adam's first and second moments after the run
    moment_rel: dict[str, float] = dataclasses.field(default_factory=dict)
    framework: str = "jax"  # the Flax trainer of this result: "jax" (Linen) or "nnx"
    final_weights: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    # other Flax trainers run against the same PyTorch run, by framework
    others: dict[str, "TrainingParityResult"] = dataclasses.field(default_factory=dict)

    @property
    def data_parallel_rel(self) -> list[float]:
        return [abs(d - j) / max(abs(j), 1e-12)
                for d, j in zip(self.losses_jax_data_parallel, self.losses_jax)]

    @property
    def loss_rel(self) -> list[float]:
        return [abs(j - t) / max(abs(t), 1e-12)
                for j, t in zip(self.losses_jax[:LOSS_STEPS], self.losses_torch[:LOSS_STEPS])]

    @property
    def worst_loss(self) -> float:
        return worst_of({str(i): v for i, v in enumerate(self.loss_rel)})[1]

    @property
    def first_loss_rel(self) -> float:
        return self.loss_rel[0] if self.loss_rel else float("nan")

    def worst(self, table: dict[str, float]) -> tuple[str, float]:
        return worst_of(table)

    def _tensor_tables(self) -> tuple[dict, dict, dict]:
        """(trimmed updates, largest element difference in lr) of tensors with more than
        one element, and the final relative error of the scalars."""
        tensors = [k for k in self.update_rel if k not in self.scalars]
        return ({k: self.update_rel_trimmed.get(k, float("nan")) for k in tensors},
                {k: self.update_max_in_lr.get(k, float("nan")) for k in tensors},
                {k: self.weight_rel[k] for k in self.scalars})

    def figures(self) -> list[tuple[str, str, float, float]]:
        """(check, figure, value, limit) of every judged figure."""
        trimmed, most, scalars = self._tensor_tables()
        out = [(FIRST_LOSS, "step 1 loss", self.first_loss_rel, TRAIN_FIRST_LOSS_RTOL),
               (LOSSES, "worst loss", self.worst_loss, TRAIN_LOSS_RTOL),
               (WEIGHTS, "worst final weight " + worst_of(self.weight_rel)[0],
                worst_of(self.weight_rel)[1], TRAIN_WEIGHTS_RTOL),
               (UPDATES, "all updates together", self.update_total_trimmed,
                TRAIN_UPDATE_TOTAL_RTOL)]
        moments = {k: v for k, v in self.moment_rel.items() if k not in self.scalars}
        if moments:
            name, value = worst_of(moments)
            out.append((MOMENTS, f"Adam moments of {name}", value, TRAIN_MOMENTS_RTOL))
        if self.scalars:
            name, value = worst_of({k: self.moment_rel.get(k, math.nan) for k in self.scalars})
            out.append((MOMENTS, f"Adam moments of scalar {name}", value,
                        TRAIN_SCALAR_MOMENTS_RTOL))
        if trimmed:
            name, value = worst_of(trimmed)
            out.append((UPDATES, f"update of {name}", value, TRAIN_UPDATE_RTOL))
            name, value = worst_of(most)
            out.append((UPDATES, f"largest element difference in lr, {name}", value,
                        TRAIN_UPDATE_FLIP_LR))
        if scalars:
            name, value = worst_of(scalars)
            out.append((UPDATES, f"final scalar {name}", value, TRAIN_SCALAR_FINAL_RTOL))
        if self.data_parallel_rel:
            out.append((DATA_PARALLEL, f"{self.data_parallel_devices} devices vs 1",
                        worst_of({str(i): v for i, v in enumerate(self.data_parallel_rel)})[1],
                        DATA_PARALLEL_LOSS_RTOL))
        return out

    def complete(self) -> bool:
        """Every step's loss on both sides and every tensor compared: an empty or partial
        comparison never passes."""
        n = min(LOSS_STEPS, self.steps)
        return (self.steps >= 1 and len(self.losses_jax) >= n and len(self.losses_torch) >= n
                and bool(self.weight_rel)
                and set(self.weight_rel) == set(self.update_rel) == set(self.moment_rel))

    def failed_checks(self) -> list[str]:
        """The checks that fail, in the order of the module docstring ([] = PASS); then
        "<framework> trainer" for each other Flax trainer that fails its own checks or
        does not take this one's steps."""
        failing = [] if self.finite and self.complete() else [FINITE]
        for check, _, value, limit in self.figures():
            if not _within(value, limit) and check not in failing:
                failing.append(check)
        failing += [f"{fw} trainer" for fw, other in self.others.items()
                    if not (other.passed and other.agrees_with(self))]
        return failing

    def step_difference(self, other: "TrainingParityResult") -> tuple[float, str, float]:
        """Another Flax trainer against this one, same batches: (worst relative difference
        of the losses, and the final tensor that differs most with its max|diff| relative
        to scale), e.g. NNX vs Linen. NaN where a loss or tensor is missing or not finite."""
        n = max(len(self.losses_jax), len(other.losses_jax))
        pairs = list(zip(other.losses_jax, self.losses_jax))
        losses = worst_of({str(i): abs(a - b) / max(abs(b), 1e-12) for i, (a, b) in
                           enumerate(pairs)})[1] if len(pairs) == n else math.nan
        rel = {k: (compare(other.final_weights[k], v).rel_to_scale
                   if k in other.final_weights else math.nan)
               for k, v in self.final_weights.items()}
        name, worst = worst_of(rel)
        return losses, name, worst

    def agrees_with(self, reference: "TrainingParityResult") -> bool:
        """Step for step within NNX_VS_LINEN_ATOL of the reference Flax trainer."""
        losses, _, weights = reference.step_difference(self)
        return _within(losses, NNX_VS_LINEN_ATOL) and _within(weights, NNX_VS_LINEN_ATOL)

    def closest_to_failing(self) -> tuple[str, float, float]:
        """(figure, value, limit) with the largest value / limit."""
        check, name, value, limit = max(self.figures(), key=lambda f: f[2] / f[3]
                                        if np.isfinite(f[2]) else math.inf)
        return name, value, limit

    @property
    def passed(self) -> bool:
        return not self.failed_checks()

    def as_dict(self) -> dict:
        def safe(value):
            return value if isinstance(value, float) and np.isfinite(value) else (
                None if isinstance(value, float) else value)

        return {"config": json.loads(self.config.to_json()), "steps": self.steps,
                "batch": self.batch, "patch": self.patch, "lr": self.lr, "rates": self.rates,
                "defect": self.defect,
                "losses_torch": [safe(v) for v in self.losses_torch],
                "losses_jax": [safe(v) for v in self.losses_jax],
                "loss_rel": [safe(v) for v in self.loss_rel],
                "worst_loss_rel": safe(self.worst_loss),
                "first_loss_rel": safe(self.first_loss_rel),
                "first_loss_rtol": TRAIN_FIRST_LOSS_RTOL,
                "loss_rtol": TRAIN_LOSS_RTOL,
                "weight_rel": {k: safe(v) for k, v in self.weight_rel.items()},
                "worst_weight": [worst_of(self.weight_rel)[0],
                                 safe(worst_of(self.weight_rel)[1])],
                "weights_rtol": TRAIN_WEIGHTS_RTOL,
                "update_rel": {k: safe(v) for k, v in self.update_rel.items()},
                "update_rel_trimmed": {k: safe(v) for k, v in self.update_rel_trimmed.items()},
                "update_total_trimmed": safe(self.update_total_trimmed),
                "moment_rel": {k: safe(v) for k, v in self.moment_rel.items()},
                "figures": [{"check": c, "figure": n, "value": safe(v), "limit": lim,
                             "passed": _within(v, lim)} for c, n, v, lim in self.figures()],
                "finite": self.finite,
                "data_parallel_devices": self.data_parallel_devices,
                "losses_jax_data_parallel": [safe(v) for v in self.losses_jax_data_parallel],
                "data_parallel_rel": [safe(v) for v in self.data_parallel_rel],
                "framework": self.framework,
                "others": {fw: {**other.as_dict(), "vs_" + self.framework: dict(zip(
                    ("worst_loss_rel", "worst_tensor", "worst_rel_to_scale"),
                    (safe(v) if isinstance(v, float) else v
                     for v in self.step_difference(other))))}
                    for fw, other in self.others.items()},
                "failed_checks": self.failed_checks(), "passed": self.passed}

    def text(self) -> str:
        n = min(LOSS_STEPS, self.steps)
        rates = sorted(set(self.rates), reverse=True)
        lines = [f"training parity, dim {self.config.dim}, {self.steps} steps, batch "
                 f"{self.batch}, patch {self.patch}, lr {' then '.join(f'{r:g}' for r in rates)}"
                 + (f" ({self.framework})" if self.framework != "jax" else "")
                 + (f"; injected into the Linen trainer only: {self.defect}"
                    if self.defect else "")]
        if not self.finite:
            lines.append("  a loss or a final weight is NaN or infinite")
        if not self.complete():
            lines.append(f"  incomplete: {len(self.losses_jax)} JAX and {len(self.losses_torch)} "
                         f"torch losses of {n}, {len(self.weight_rel)} tensors compared")
        for check, name, value, limit in self.figures():
            mark = "ok" if _within(value, limit) else "FAILS"
            lines.append(f"  {check}: {name}: {value:.2e} (limit {limit:.0e}) {mark}")
        for fw, other in self.others.items():
            lines += [f"  {fw} trainer:", *("  " + t for t in other.text().splitlines()[1:-1]),
                      "    vs {}: losses {:.2e}, final {} {:.2e} relative to scale "
                      "(tolerance {:.0e})".format(self.framework, *self.step_difference(other),
                                                  NNX_VS_LINEN_ATOL)]
        lines.append(f"  {'PASS' if self.passed else 'FAIL'}"
                     + ("" if self.passed else f" ({', '.join(self.failed_checks())})"))
        return "\n".join(lines)

    def markdown(self) -> str:
        rows = "\n".join(f"| {i + 1} | {t:.7f} | {j:.7f} | {r:.2e} |" for i, (t, j, r) in
                         enumerate(zip(self.losses_torch, self.losses_jax, self.loss_rel)))
        return ("# Training parity\n\n```\n" + self.text() + "\n```\n\n"
                "| step | torch loss | JAX loss | relative error |\n"
                "| --- | --- | --- | --- |\n" + rows + "\n")

    def write_report(self, out_dir: str | Path) -> list[Path]:
        """training_parity.json, .md and .png (both loss curves and their relative error)."""
        return write_report(out_dir, {"training_parity.json": json.dumps(self.as_dict(), indent=1),
                                      "training_parity.md": self.markdown(),
                                      "training_parity.png": self.plot})

    def plot(self, dst: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
        steps = np.arange(1, len(self.losses_torch) + 1)
        a.plot(steps, self.losses_torch, "o-", label="torch")
        a.plot(steps[:len(self.losses_jax)], self.losses_jax, "x--", label="JAX")
        a.set_xlabel("step")
        a.set_ylabel("loss")
        a.legend()
        rel = np.nan_to_num(np.asarray(self.loss_rel, float), nan=1.0, posinf=1.0)
        b.semilogy(np.arange(1, len(rel) + 1), np.maximum(rel, 1e-12), "o-")
        b.axhline(TRAIN_LOSS_RTOL, color="tab:red", ls="--", label="tolerance")
        b.set_xlabel("step")
        b.set_ylabel("|JAX - torch| / |torch|")
        b.legend()
        fig.tight_layout()
        save_figure_atomic(fig, dst)
