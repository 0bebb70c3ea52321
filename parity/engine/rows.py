"""Rows: captured outputs aligned by torch module name, judged, and the first divergence.

Rows follow the torch execution order as captured (a module's row comes when it
finishes, so children precede their parent). The first failing row is therefore the
innermost module that fails first: if a child had failed it would have come earlier.

Alignment: a torch module name maps to the port's paths by the frontend's rename rule
(weights/trees.py for Linen), unless a user mapping names the path. Every output seen on
one side only is a row of its own: "only in torch" / "only in flax" (informational when
every module is captured: a torch `nn.ReLU` module is usually a function call in Flax),
or "missing in JAX" (a failure) when the caller chose the modules to compare. The final
output (the root, row `prediction`) is always judged: a leaf of it on one side only fails.

The pass rule fails safe: a report passes only when no row fails AND at least one row was
compared and agreed, so an empty comparison never passes. A NaN or an infinity in a
compared output is an infinite error (tolerance.measure); zero-size outputs are "empty"
(nothing was measured) and fail; a chosen torch module that produced no output is
"missing in torch" and fails; a final output with no floating-point array on either side
is "final output not compared" and fails.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Callable, Iterable

import numpy as np

from core.text import escape_text
from parity.engine.tolerance import FORWARD_ATOL, fails_at_its_own_scale, measure
from weights.trees import flax_path_candidates

PREDICTION = "prediction"  # the row of the model's final output (the root module)
PASS, FAIL, SHAPE, MISSING = "pass", "fail", "shape mismatch", "missing in JAX"
ONLY_TORCH, ONLY_FLAX, OUTPUT_ONLY_FLAX = "only in torch", "only in flax", "output only in flax"
EMPTY = "empty (zero-size, nothing to compare)"
MISSING_TORCH = "missing in torch"                 # a chosen module that produced no output
NOT_COMPARED = "final output not compared"        # no floating-point array on either side
HYPERPARAMETER = "hyperparameter mismatch"   # parity.engine.hyperparameters
FAILING = (FAIL, SHAPE, MISSING, OUTPUT_ONLY_FLAX, EMPTY, MISSING_TORCH, NOT_COMPARED)
FAILING += (HYPERPARAMETER,)


@dataclasses.dataclass(frozen=True)
class Row:
    name: str                      # torch module name (+ output suffix), or "prediction"
    torch_shape: tuple[int, ...] | None   # None: only in flax
    jax_shape: tuple[int, ...] | None     # None: missing on the JAX side
    max_abs: float | None          # None when the shapes differ or one side is missing
    scale: float | None            # max |torch output|
    rel_to_scale: float | None     # max_abs / max(1, scale), compared with the tolerance
    status: str
    flax_name: str | None = None   # the Flax path (+ suffix) the row was compared with
    module: str | None = None      # torch module name ("" for the root); None: only in flax
    layout: str | None = None      # what was done to the torch output before comparing it:
                                   # "channels-last" (moved) or "as-is"; None: not known

    @property
    def passed(self) -> bool:
        return self.status == PASS

    @property
    def failed(self) -> bool:
        return self.status in FAILING

    @property
    def compared(self) -> bool:
        return self.status in (PASS, FAIL, SHAPE)

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for key in ("max_abs", "scale", "rel_to_scale"):
            value = out[key]
            out[key] = value if value is None or np.isfinite(value) else None
        out["torch_shape"] = None if self.torch_shape is None else list(self.torch_shape)
        out["jax_shape"] = None if self.jax_shape is None else list(self.jax_shape)
        return out


@dataclasses.dataclass
class Report:
    """The rows of one comparison and the tolerance they were judged by."""

    rows: list[Row]
    tol: float

    @property
    def failures(self) -> list[Row]:
        return [row for row in self.rows if row.failed]

    @property
    def passed(self) -> bool:
        """No row fails and at least one row was compared and agreed (an empty
        comparison proves nothing, so it never passes)."""
        return not self.failures and any(row.passed for row in self.rows)

    @property
    def first_divergence(self) -> str | None:
        failures = self.failures
        return failures[0].name if failures else None

    @property
    def first_divergence_module(self) -> str | None:
        """The torch module name of the first divergence (root: 'prediction')."""
        failures = self.failures
        if not failures:
            return None
        module = failures[0].module
        return PREDICTION if module in ("", None) else module

    @property
    def compared(self) -> list[Row]:
        return [row for row in self.rows if row.compared]

    @property
    def worst(self) -> Row | None:
        scored = [r for r in self.rows if r.rel_to_scale is not None]
        return max(scored, key=lambda r: r.rel_to_scale) if scored else None

    @property
    def max_rel_error(self) -> float | None:
        """The largest row error relative to scale (inf for a shape mismatch)."""
        values = [float("inf") if r.status == SHAPE else r.rel_to_scale for r in self.rows
                  if r.status in (PASS, FAIL, SHAPE)]
        return max(values) if values else None


def judge(name: str, reference: np.ndarray, actual: np.ndarray | None, tol: float,
          flax_name: str | None = None, module: str | None = None,
          missing: str = MISSING, layout: str | None = None) -> Row:
    """One row. The reference is already in the layout the port must give (`layout`, from
    what produced it): no other transposition is ever tried, so a port that returns
    tokens (N, C, L) for torch's (N, L, C) fails even when L == C."""
    shape = tuple(np.shape(reference))
    if actual is None:
        return Row(name, shape, None, None, None, None, missing, None, module, layout)
    result = measure(actual, reference, tol)
    if not result.shape_ok:
        return Row(name, shape, tuple(np.shape(actual)), None, None, None, SHAPE, flax_name,
                   module, layout)
    if result.empty:
        return Row(name, shape, tuple(np.shape(actual)), None, None, None, EMPTY, flax_name,
                   module, layout)
    passed = result.passed and not fails_at_its_own_scale(result)
    return Row(name, shape, tuple(np.shape(actual)), result.max_abs, result.scale,
               result.rel_to_scale, PASS if passed else FAIL, flax_name, module, layout)


def row_name(module: str, suffix: str) -> str:
    return (PREDICTION if module == "" else module) + suffix


def align_rows(torch_outputs: "OrderedDict[tuple[str, str], np.ndarray]",
               flax_outputs: dict[tuple[str, str], np.ndarray], tol: float = FORWARD_ATOL,
               mapping: dict[str, str] | None = None, chosen: bool = False,
               paths_of: Callable[[str], list[str]] = flax_path_candidates,
               declared: Iterable[str] = (),
               layouts: dict[tuple[str, str], str] | None = None,
               not_judged: frozenset = frozenset()) -> Report:
    """Rows for every captured output of either side (keys (module or path, suffix)).

    mapping: torch module name -> Flax path, overriding the rename rule (`paths_of`).
    chosen: the torch modules were chosen by the caller, so one missing in Flax fails;
    otherwise it is an informational "only in torch" row. declared: the chosen torch
    modules; one with no captured output fails ("missing in torch"). The root ('')
    always pairs with the root, and its leaves fail when one side lacks them; when
    neither side's final output holds a floating-point array, a failing row says so.
    not_judged: torch modules whose rows are informational (a layer subclass with
    children of its own).
    """
    mapping = mapping or {}
    flax_modules = {path for path, _ in flax_outputs}
    resolved: dict[str, str | None] = {"": ""}
    used: set[tuple[str, str]] = set()
    rows = []
    # a Flax path the mapping gives one torch module is not another's by the rename rule
    # (torch's features.1 is a ReLU where a port's list numbers its second conv features_1)
    owner = {path: name for name, path in mapping.items()}
    for (module, suffix), reference in torch_outputs.items():
        if module not in resolved:
            candidates = [mapping[module]] if module in mapping else \
                [c for c in paths_of(module) if owner.get(c, module) == module]
            resolved[module] = next((c for c in candidates if c in flax_modules), None)
        path = resolved[module]
        if module in not_judged and not chosen:   # torch_side.TorchCapture.composite
            path = None
        key = None if path is None else (path, suffix)
        actual = flax_outputs.get(key) if key is not None else None
        if actual is not None:
            used.add(key)
        flax_name = None if actual is None else row_name(path, suffix)
        rows.append(judge(row_name(module, suffix), reference, actual, tol, flax_name, module,
                          MISSING if chosen or module == "" else ONLY_TORCH,
                          (layouts or {}).get((module, suffix))))
    seen = {module for module, _ in torch_outputs}
    rows += [Row(name, None, None, None, None, None, MISSING_TORCH, None, name)
             for name in declared if name and name not in seen]
    if "" not in seen and "" not in flax_modules:
        rows.append(Row(PREDICTION, None, None, None, None, None, NOT_COMPARED, None, ""))
    for (path, suffix), value in flax_outputs.items():
        if (path, suffix) not in used:
            name = row_name(path, suffix)
            rows.append(Row(name, None, tuple(np.shape(value)), None, None, None,
                            OUTPUT_ONLY_FLAX if path == "" else ONLY_FLAX, name, None))
    return Report(rows, tol)


def format_shape(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else "x".join(str(s) for s in shape)


def _num(value: float | None) -> str:
    return "-" if value is None else (f"{value:.2e}" if np.isfinite(value) else "inf")


def format_table(report: Report) -> list[str]:
    """The per-row table as text lines (for the terminal)."""
    names = [escape_text(r.name) for r in report.rows]
    width = max([len(n) for n in names] + [5])
    lines = [f"{'row':<{width}}  {'shape':<16} {'layout':<13} {'max|diff|':>9}  "
             f"{'rel.scale':>9}  status"]
    for name, r in zip(names, report.rows):
        shape = format_shape(r.torch_shape if r.torch_shape is not None else r.jax_shape)
        status = r.status
        if r.status == SHAPE:
            status += f" (JAX {format_shape(r.jax_shape)})"
        if r.status == HYPERPARAMETER:
            status += f" ({escape_text(r.flax_name or '')})"
        lines.append(f"{name:<{width}}  {shape:<16} {r.layout or '-':<13} "
                     f"{_num(r.max_abs):>9}  {_num(r.rel_to_scale):>9}  {status}")
    return lines


def suspects(report: Report) -> list[str]:
    """Torch-only modules (pooling, activations, padding, pixel shuffle: functions in the
    port) that ran between the last passing row and the first failing one: the first
    failure may be theirs, shown in the next module that has a row."""
    failures = report.failures
    if not failures or failures[0].status == HYPERPARAMETER:
        return []
    at = report.rows.index(failures[0])
    found = []
    for row in reversed(report.rows[:at]):
        if row.status == PASS:
            break
        if row.status == ONLY_TORCH and row.module:
            found.append(row.module)
    return found[::-1]


def verdict_line(report: Report) -> str:
    worst = report.worst
    compared = len(report.compared)
    one_side = sum(not r.compared and not r.failed for r in report.rows)
    extra = f" ({one_side} on one side only, not compared)" if one_side else ""
    if not report.failures and not report.passed:
        return f"FAILS: nothing was compared ({len(report.rows)} rows, none on both sides)"
    if report.passed:
        where = f"; worst {escape_text(worst.name)} at {worst.rel_to_scale:.2e}" if worst else ""
        return (f"PASS: all {compared} rows agree within {report.tol:.0e} "
                f"relative to scale{where}{extra}")
    first = report.failures[0]
    detail = first.status if first.status != FAIL else \
        f"{first.rel_to_scale:.2e} relative to scale, max|diff| {first.max_abs:.2e}"
    if first.status == FAIL and first.rel_to_scale is not None and \
            first.rel_to_scale <= report.tol and first.scale:
        detail = (f"max|diff| {first.max_abs:.2e} is {first.max_abs / first.scale:.0%} of "
                  f"its values, all below {first.scale:.2e}")
    if first.status == SHAPE:
        detail += f": torch {format_shape(first.torch_shape)} vs JAX {format_shape(first.jax_shape)}"
    if first.status == HYPERPARAMETER:
        detail += f": {escape_text(first.flax_name or '')}"
    blamed = suspects(report)
    also = f"; torch-only modules just before it, suspects too: " \
        f"{escape_text(', '.join(blamed))}" if blamed else ""
    return (f"DIVERGES: first divergence at {escape_text(first.name)} ({detail}){also}; "
            f"{len(report.failures)} of {len(report.rows) - one_side} rows fail at tol "
            f"{report.tol:.0e}{extra}")
