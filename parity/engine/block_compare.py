"""Aligning captured outputs by torch module name and finding the first divergence.

Rows follow the torch execution order as captured (a module's row comes when it
finishes, so children precede their parent). The first failing row is therefore the
innermost module that fails first: if a child had failed it would have come earlier.

Alignment: a torch module name maps to a Flax path by one rename rule
(`a.b.0` -> `a/b_0`, see `flax_path`), unless a user mapping names the path; a
Flax `nn.Sequential` (`a/b/layers_0`) is recognised too. Every output seen on one
side only is a row of its own: "only in torch" / "only in flax" (informational when
every module is captured: a torch `nn.ReLU` module is usually a function call in
Flax), or "missing in JAX" (a failure) when the caller chose the modules to compare.
"""

from __future__ import annotations

import dataclasses
import re
from collections import OrderedDict

import numpy as np

from parity.engine.hooks import PREDICTION
from parity.engine.tolerance import FORWARD_ATOL, compare
from weights.rules import flax_path_candidates  # noqa: F401  (the Sequential fallback)
from core.text import escape_text  # noqa: F401  (the one escaping function; re-exported)

PASS, FAIL, SHAPE, MISSING = "pass", "fail", "shape mismatch", "missing in JAX"
ONLY_TORCH, ONLY_FLAX = "only in torch", "only in flax"
FAILING = (FAIL, SHAPE, MISSING)
_SEQUENTIAL_INDEX = re.compile(r"\.(\d+)(?=\.|$)")


def flax_path(torch_name: str) -> str:
    """The Flax module path ('a/b/fc_0') of a torch module name ('a.b.fc.0')."""
    if torch_name == PREDICTION:
        return PREDICTION
    return _SEQUENTIAL_INDEX.sub(r"_\1", torch_name).replace(".", "/")


@dataclasses.dataclass(frozen=True)
class BlockRow:
    name: str                      # torch module name (+ output suffix), or "prediction"
    torch_shape: tuple[int, ...] | None   # None: only in flax
    jax_shape: tuple[int, ...] | None     # None: the block is missing on the JAX side
    max_abs: float | None          # None when the shapes differ or one side is missing
    scale: float | None            # max |torch output|
    rel_to_scale: float | None     # max_abs / max(1, scale), compared with the tolerance
    status: str
    flax_name: str | None = None   # the Flax path (+ suffix) the row was compared with
    module: str | None = None      # torch module name ("" for the root); None: only in flax

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
class LayerReport:
    """The rows of one comparison and the tolerance they were judged by."""

    rows: list[BlockRow]
    tol: float

    @property
    def failures(self) -> list[BlockRow]:
        return [row for row in self.rows if row.failed]

    @property
    def passed(self) -> bool:
        return not self.failures

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
    def compared(self) -> list[BlockRow]:
        return [row for row in self.rows if row.compared]

    @property
    def worst(self) -> BlockRow | None:
        scored = [r for r in self.rows if r.rel_to_scale is not None]
        return max(scored, key=lambda r: r.rel_to_scale) if scored else None

    @property
    def max_rel_error(self) -> float | None:
        """The largest block error relative to scale (inf for a shape mismatch)."""
        values = [float("inf") if r.status == SHAPE else r.rel_to_scale for r in self.rows
                  if r.status in (PASS, FAIL, SHAPE)]
        return max(values) if values else None


def compare_block(name: str, reference: np.ndarray, actual: np.ndarray | None,
                  tol: float, flax_name: str | None = None, module: str | None = None,
                  missing: str = MISSING) -> BlockRow:
    shape = tuple(np.shape(reference))
    if actual is None:
        return BlockRow(name, shape, None, None, None, None, missing, None, module)
    result = compare(actual, reference, tol)
    if not result.shape_ok and reference.ndim in (3, 4, 5):
        # a channels-first torch output that the port keeps channels-first too (or a
        # 3-D (N, L, D) sequence): compare it in the torch layout
        back = np.moveaxis(reference, -1, 1)
        if back.shape == np.shape(actual):
            result = compare(actual, back, tol)
    if not result.shape_ok:
        return BlockRow(name, shape, tuple(np.shape(actual)), None, None, None, SHAPE,
                        flax_name, module)
    return BlockRow(name, shape, tuple(np.shape(actual)), result.max_abs, result.scale,
                    result.rel_to_scale, PASS if result.passed else FAIL, flax_name, module)


def compare_blocks(torch_outputs: "OrderedDict[str, np.ndarray]",
                   jax_outputs: dict[str, np.ndarray], tol: float = FORWARD_ATOL) -> LayerReport:
    """One row per chosen torch block, in the torch order; JAX outputs are looked up by
    the Flax path of each torch name. A block the JAX side lacks fails ("missing in
    JAX"): the caller chose it."""
    rows = [compare_block(name, ref, jax_outputs.get(flax_path(name)), tol, flax_path(name),
                          name)
            for name, ref in torch_outputs.items()]
    return LayerReport(rows, tol)


def row_name(module: str, suffix: str) -> str:
    return (PREDICTION if module == "" else module) + suffix


def align_rows(torch_outputs: "OrderedDict[tuple[str, str], np.ndarray]",
               flax_outputs: dict[tuple[str, str], np.ndarray], tol: float = FORWARD_ATOL,
               mapping: dict[str, str] | None = None, chosen: bool = False) -> LayerReport:
    """Rows for every captured output of either side (keys (module or path, suffix)).

    mapping: torch module name -> Flax path (slashes or dots), overriding the rename
    rule. chosen: the torch modules were chosen by the caller, so one missing in Flax
    fails; otherwise it is an informational "only in torch" row.
    """
    mapping = {k: v.replace(".", "/") for k, v in (mapping or {}).items()}
    flax_modules = {path for path, _ in flax_outputs}
    resolved: dict[str, str | None] = {}
    used: set[tuple[str, str]] = set()
    rows = []
    for (module, suffix), reference in torch_outputs.items():
        if module not in resolved:
            candidates = [mapping[module]] if module in mapping else flax_path_candidates(module)
            resolved[module] = next((c for c in candidates if c in flax_modules), None)
        path = resolved[module]
        key = None if path is None else (path, suffix)
        actual = flax_outputs.get(key) if key is not None else None
        if actual is not None:
            used.add(key)
        flax_name = None if key is None or actual is None else row_name(path, suffix)
        rows.append(compare_block(row_name(module, suffix), reference, actual, tol, flax_name,
                                  module, MISSING if chosen else ONLY_TORCH))
    for (path, suffix), value in flax_outputs.items():
        if (path, suffix) not in used:
            name = row_name(path, suffix)
            rows.append(BlockRow(name, None, tuple(np.shape(value)), None, None, None,
                                 ONLY_FLAX, name, None))
    return LayerReport(rows, tol)


def format_shape(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else "x".join(str(s) for s in shape)


def _num(value: float | None) -> str:
    return "-" if value is None else (f"{value:.2e}" if np.isfinite(value) else "inf")


def format_table(report: LayerReport) -> list[str]:
    """The per-block table as text lines (for the terminal)."""
    names = [escape_text(r.name) for r in report.rows]
    width = max([len(n) for n in names] + [5])
    lines = [f"{'block':<{width}}  {'shape':<16} {'max|diff|':>9}  {'rel.scale':>9}  status"]
    for name, r in zip(names, report.rows):
        shape = format_shape(r.torch_shape if r.torch_shape is not None else r.jax_shape)
        status = r.status
        if r.status == SHAPE:
            status += f" (JAX {format_shape(r.jax_shape)})"
        lines.append(f"{name:<{width}}  {shape:<16} {_num(r.max_abs):>9}  "
                     f"{_num(r.rel_to_scale):>9}  {status}")
    return lines


def verdict_line(report: LayerReport) -> str:
    worst = report.worst
    compared = len(report.compared)
    one_side = len(report.rows) - compared - sum(r.status == MISSING for r in report.rows)
    extra = f" ({one_side} on one side only, not compared)" if one_side else ""
    if report.passed:
        where = f"; worst {escape_text(worst.name)} at {worst.rel_to_scale:.2e}" if worst else ""
        return (f"PASS: all {compared} blocks agree within {report.tol:.0e} "
                f"relative to scale{where}{extra}")
    first = report.failures[0]
    detail = first.status if first.status != FAIL else \
        f"{first.rel_to_scale:.2e} relative to scale, max|diff| {first.max_abs:.2e}"
    if first.status == SHAPE:
        detail += f": torch {format_shape(first.torch_shape)} vs JAX {format_shape(first.jax_shape)}"
    return (f"DIVERGES: first divergence at {escape_text(first.name)} ({detail}); "
            f"{len(report.failures)} of {len(report.rows) - one_side} blocks fail at tol "
            f"{report.tol:.0e}{extra}")
