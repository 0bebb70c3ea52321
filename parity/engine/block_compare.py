"""Aligning captured block outputs by torch module name and finding the first divergence.

Rows follow the torch execution order as captured (a block's row comes when it
finishes, so children precede their parent). The first failing row is therefore the
innermost block that fails first: if a child had failed it would have come earlier.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import numpy as np

from parity.engine.capture import flax_path
from parity.engine.tolerance import FORWARD_ATOL, compare

PASS, FAIL, SHAPE, MISSING = "pass", "fail", "shape mismatch", "missing in JAX"


@dataclasses.dataclass(frozen=True)
class BlockRow:
    name: str                      # torch module name, or "prediction"
    torch_shape: tuple[int, ...]
    jax_shape: tuple[int, ...] | None
    max_abs: float | None          # None when the shapes differ or the block is missing
    scale: float | None            # max |torch output|
    rel_to_scale: float | None     # max_abs / max(1, scale), compared with the tolerance
    status: str

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for key in ("max_abs", "scale", "rel_to_scale"):
            value = out[key]
            out[key] = value if value is None or np.isfinite(value) else None
        out["torch_shape"] = list(self.torch_shape)
        out["jax_shape"] = None if self.jax_shape is None else list(self.jax_shape)
        return out


@dataclasses.dataclass
class LayerReport:
    rows: list[BlockRow]
    tol: float

    @property
    def failures(self) -> list[BlockRow]:
        return [row for row in self.rows if not row.passed]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def first_divergence(self) -> str | None:
        failures = self.failures
        return failures[0].name if failures else None

    @property
    def worst(self) -> BlockRow | None:
        scored = [r for r in self.rows if r.rel_to_scale is not None]
        return max(scored, key=lambda r: r.rel_to_scale) if scored else None


def compare_block(name: str, reference: np.ndarray, actual: np.ndarray | None,
                  tol: float) -> BlockRow:
    shape = tuple(np.shape(reference))
    if actual is None:
        return BlockRow(name, shape, None, None, None, None, MISSING)
    result = compare(actual, reference, tol)
    if not result.shape_ok:
        return BlockRow(name, shape, tuple(np.shape(actual)), None, None, None, SHAPE)
    return BlockRow(name, shape, shape, result.max_abs, result.scale, result.rel_to_scale,
                    PASS if result.passed else FAIL)


def compare_blocks(torch_outputs: "OrderedDict[str, np.ndarray]",
                   jax_outputs: dict[str, np.ndarray], tol: float = FORWARD_ATOL) -> LayerReport:
    """One row per torch block, in the torch order; JAX outputs are looked up by the
    Flax path of each torch name. JAX-only outputs are ignored."""
    rows = [compare_block(name, ref, jax_outputs.get(flax_path(name)), tol)
            for name, ref in torch_outputs.items()]
    return LayerReport(rows, tol)


def format_shape(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else "x".join(str(s) for s in shape)


def _num(value: float | None) -> str:
    return "-" if value is None else (f"{value:.2e}" if np.isfinite(value) else "inf")


def format_table(report: LayerReport) -> list[str]:
    """The per-block table as text lines (for the terminal)."""
    width = max(len(r.name) for r in report.rows)
    lines = [f"{'block':<{width}}  {'shape':<16} {'max|diff|':>9}  {'rel.scale':>9}  status"]
    for r in report.rows:
        shape = format_shape(r.torch_shape)
        status = r.status
        if r.status == SHAPE:
            status += f" (JAX {format_shape(r.jax_shape)})"
        lines.append(f"{r.name:<{width}}  {shape:<16} {_num(r.max_abs):>9}  "
                     f"{_num(r.rel_to_scale):>9}  {status}")
    return lines


def verdict_line(report: LayerReport) -> str:
    worst = report.worst
    if report.passed:
        where = f"; worst {worst.name} at {worst.rel_to_scale:.2e}" if worst else ""
        return (f"PASS: all {len(report.rows)} blocks agree within {report.tol:.0e} "
                f"relative to scale{where}")
    first = report.failures[0]
    detail = first.status if first.status != FAIL else \
        f"{first.rel_to_scale:.2e} relative to scale, max|diff| {first.max_abs:.2e}"
    if first.status == SHAPE:
        detail += f": torch {format_shape(first.torch_shape)} vs JAX {format_shape(first.jax_shape)}"
    return (f"DIVERGES: first divergence at {first.name} ({detail}); "
            f"{len(report.failures)} of {len(report.rows)} blocks fail at tol {report.tol:.0e}")
