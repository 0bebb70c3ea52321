"""The one report format of a parity check, for `dln check` and `dln parity` alike.

A `CheckResult` holds what was compared (its `details`: models, weights, inputs, and a
preset's own items such as DLN's config or injected defect), the forward rows, and, when
run, the gradient rows and the mutants. It is written as report.json, report.md,
per_layer_error.png (the first divergence ringed and named), gradient_error.png,
mutants.json, and JUnit XML; every file goes through core.report_files.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from core.atomic_files import save_figure_atomic
from core.report_files import json_text, write_report as write_report_files
from core.text import escape_text
from parity.engine.rows import FAIL, PASS, format_shape, verdict_line

PLOT_NAME = "per_layer_error.png"
GRADIENT_PLOT_NAME = "gradient_error.png"
PLOT_FLOOR = 1e-12  # exact agreement (0 error) is drawn here: a log axis has no zero
RULE = "max|flax - torch| <= tol * max(1, max|torch|), per row"


@dataclasses.dataclass
class CheckResult:
    title: str
    details: dict                      # what was compared (JSON-safe values)
    report: object | None = None       # parity.engine.rows.Report (forward rows)
    mutants: object | None = None      # parity.zoo.mutation.MutationReport
    gradients: object | None = None    # parity.grads.model_gradients.GradientParity
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (self.report is None or self.report.passed) and \
            (self.gradients is None or self.gradients.passed) and \
            (self.mutants is None or self.mutants.passed)

    @property
    def first_divergence(self) -> str | None:
        return None if self.report is None else self.report.first_divergence_module


def report_dict(result: CheckResult) -> dict:
    """Everything a script needs (JSON-safe: non-finite numbers are null)."""
    out = {"title": result.title, "passed": result.passed,
           "verdict": "pass" if result.passed else "diverges", **result.details,
           "notes": result.notes}
    layers = result.report
    if layers is not None:
        out.update({"first_divergence": layers.first_divergence_module,
                    "first_divergence_row": layers.first_divergence, "tolerance": layers.tol,
                    "tolerance_rule": RULE, "rows_compared": len(layers.compared),
                    "rows_failing": len(layers.failures),
                    "rows": [row.as_dict() for row in layers.rows]})
    if result.gradients is not None:
        out["gradients"] = result.gradients.as_dict()
    if result.mutants is not None:
        out["mutation_score"] = result.mutants.score
        out["mutants_not_run"] = result.mutants.not_scored
        out["mutants_unproven"] = result.mutants.unproven
        out["mutants_missed"] = [f"{m.defect} at {m.site}" for m in result.mutants.missed]
    return out


def _md(text) -> str:
    """Text for a Markdown table cell: one line, pipes escaped."""
    return escape_text(text).replace("|", "\\|")


def _cell(value) -> str:
    return "-" if value is None else f"{value:.2e}"


def _plain(value) -> str:
    """A detail for a Markdown line: a dict as `key value, ...`, a shape as `2x3x8x8`."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {_plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return format_shape(tuple(value))
    return str(value)


def report_markdown(result: CheckResult) -> str:
    layers = result.report
    lines = [f"# {escape_text(result.title)}", ""]
    if layers is not None:
        first = layers.first_divergence_module
        lines += [f"**{escape_text(verdict_line(layers))}**", "",
                  f"- first divergence: `{escape_text(first)}`" if first
                  else "- first divergence: none"]
    lines += [f"- {escape_text(key)}: {escape_text(_plain(value))}" for key, value in
              result.details.items() if value is not None]
    if layers is not None:
        lines.append(f"- tolerance: max\\|diff\\| <= {layers.tol:.0e} x max(1, max\\|torch\\|) "
                     "per row")
    lines += [f"- note: {escape_text(note)}" for note in result.notes]
    if result.mutants is not None:
        lines.append(f"- {escape_text(result.mutants.summary())}")
    if result.gradients is not None:
        lines += [f"- {escape_text(line)}" for line in result.gradients.summary_lines()]
    # run times are printed, not written here: the same run gives byte-identical files
    if layers is not None:
        lines += ["", f"![per-row error]({PLOT_NAME})", "",
                  "| # | torch module | Flax path | shape | layout | max abs error "
                  "| relative to scale | status |",
                  "| ---: | --- | --- | --- | --- | ---: | ---: | --- |"]
        for i, r in enumerate(layers.rows, 1):
            status = r.status
            if r.jax_shape is not None and r.torch_shape is not None and \
                    r.jax_shape != r.torch_shape:
                status += f" (JAX {format_shape(r.jax_shape)})"
            if r.failed and r.name == layers.first_divergence:
                status = f"**{status} (first divergence)**"
            shape = r.torch_shape if r.torch_shape is not None else r.jax_shape
            lines.append(f"| {i} | `{_md(r.name) if r.module is not None else '-'}` | "
                         f"`{_md(r.flax_name or '-')}` | {format_shape(shape)} | "
                         f"{getattr(r, 'layout', None) or '-'} | "
                         f"{_cell(r.max_abs)} | {_cell(r.rel_to_scale)} | {status} |")
    if result.gradients is not None:
        g = result.gradients
        lines += ["", f"## Gradients ({g.precision}, {g.rule})", "",
                  f"![per-tensor error]({GRADIENT_PLOT_NAME})", "",
                  "| tensor | kind | relative L2 | relative to scale |", "| --- | --- | ---: | ---: |"]
        lines += [f"| `{_md(r.torch_name)}` | {r.kind} | {_cell(r.rel_l2)} | "
                  f"{_cell(r.rel_to_scale)} |" for r in g.rows]
    if result.mutants is not None and result.mutants.results:
        lines += ["", "## Mutants (JAX side only)", "",
                  "| defect | site | status | first divergence | max rel. error | note |",
                  "| --- | --- | --- | --- | ---: | --- |"]
        for m in result.mutants.results:
            lines.append(f"| {m.defect} | {_md(m.site or '-')} | {m.status} | "
                         f"{_md(m.first_divergence or '-')} | {_cell(m.max_rel_error)} | "
                         f"{_md(m.note)} |")
    return "\n".join(lines) + "\n"


def plot_rows(layers, dst: Path, title: str) -> None:
    """Relative error per row on a log axis, in execution order, with the tolerance; the
    first divergence is ringed and named; the legend sits outside the axes, above them,
    so that it covers no row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = layers.rows
    xs = np.arange(len(rows))
    rel = [r.rel_to_scale for r in rows]
    fig, ax = plt.subplots(figsize=(max(8.0, 0.2 * len(rows) + 2), 5.5))
    try:
        finite = [v for v in rel if v is not None and np.isfinite(v)]
        top = max(finite + [layers.tol]) * 10
        values = [top if v is None or not np.isfinite(v) else max(v, PLOT_FLOOR) for v in rel]
        colors = ["tab:blue" if r.status == PASS else
                  ("tab:red" if r.failed else "0.6") for r in rows]
        ax.plot(xs, values, color="0.8", linewidth=0.8, zorder=1)
        ax.scatter(xs, values, c=colors, s=18, zorder=2)
        for x, r in zip(xs, rows):
            if r.status not in (PASS, FAIL):  # no number: drawn at the top, labelled
                ax.scatter([x], [top], marker="X" if r.failed else "o", s=40,
                           color="tab:red" if r.failed else "0.6", zorder=3)
                ax.annotate(r.status, (x, top / 30), rotation=90, fontsize=6,
                            color="tab:red" if r.failed else "0.4", ha="right", va="top")
        ax.axhline(layers.tol, color="tab:red", linestyle="--", linewidth=1,
                   label=f"tolerance {layers.tol:.0e}")
        first = next((i for i, r in enumerate(rows) if r.failed), None)
        if first is not None:
            ax.scatter([first], [values[first]], s=160, facecolors="none",
                       edgecolors="black", linewidths=1.5, zorder=4,
                       label=f"first divergence: {escape_text(rows[first].name)}")
            ax.axvline(first, color="black", linestyle=":", linewidth=0.8, zorder=0)
            title += f"; first divergence: {escape_text(rows[first].name)}"
        ax.set_yscale("log")
        if any(v == 0 for v in rel):
            ax.text(0.01, 0.02, f"exact agreement (0) is drawn at {PLOT_FLOOR:.0e}",
                    transform=ax.transAxes, fontsize=7, color="0.4")
        ax.set_xticks(xs)
        ax.set_xticklabels([escape_text(r.name) for r in rows], rotation=90, fontsize=6)
        for label, r in zip(ax.get_xticklabels(), rows):
            if r.failed:
                label.set_color("tab:red")
        ax.set_ylabel("max|jax - torch| / max(1, max|torch|)")
        ax.set_title(title, fontsize=9, pad=24)
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, fontsize=8,
                  frameon=False, borderaxespad=0.2)
        fig.tight_layout()
        save_figure_atomic(fig, dst)
    finally:
        plt.close(fig)


def plot_gradients(gradients, dst: Path) -> None:
    """Per-tensor error on a log axis: the judged gradients and every other series of the
    run (float32 gradients, Adam steps), with the gradient limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {f"gradients, {gradients.precision} ({gradients.rule}, judged)": gradients.rows,
              "gradients, float32 (relative L2)": gradients.float32_rows,
              **{f"Adam step, {label} (relative L2)": rows
                 for label, rows in gradients.adam.items()}}
    fig, ax = plt.subplots(figsize=(max(8.0, 0.12 * len(gradients.rows) + 2), 5.0))
    try:
        for i, (label, rows) in enumerate((k, v) for k, v in series.items() if v):
            values = [r.rel_to_scale if i == 0 and gradients.rule != "relative L2" else r.rel_l2
                      for r in rows]
            ax.scatter(range(len(rows)), [max(v, PLOT_FLOOR) if np.isfinite(v) else 1.0
                                          for v in values], s=10, label=label)
        ax.axhline(gradients.tol, color="tab:red", linestyle="--", linewidth=1,
                   label=f"gradient limit {gradients.tol:.0e}")
        ax.set_yscale("log")
        ax.set_xticks(range(len(gradients.rows)))
        ax.set_xticklabels([escape_text(r.torch_name) for r in gradients.rows], rotation=90,
                           fontsize=4)
        ax.set_ylabel("error per tensor")
        ax.set_title(f"gradient parity, {escape_text(gradients.loss_name)}", fontsize=9)
        ax.legend(loc="upper left", fontsize=7)
        fig.tight_layout()
        save_figure_atomic(fig, dst)
    finally:
        plt.close(fig)


def write_report(result: CheckResult, folder: str | os.PathLike) -> list[Path]:
    """report.json, report.md and the plots (and mutants.json) in `folder` (created)."""
    files = {"report.json": json_text(report_dict(result)),
             "report.md": report_markdown(result)}
    if result.report is not None:
        files[PLOT_NAME] = lambda dst: plot_rows(result.report, dst,
                                                 "per-row error, torch execution order")
    if result.gradients is not None:
        files[GRADIENT_PLOT_NAME] = lambda dst: plot_gradients(result.gradients, dst)
    if result.mutants is not None:
        files["mutants.json"] = json_text([m.as_dict() for m in result.mutants.results])
    return write_report_files(folder, files)


def junit_xml(result: CheckResult) -> str:
    """One testcase per row (compared or one-sided), per gradient tensor and per mutant."""
    cases, failures, skipped = [], 0, 0

    def case(group: str, name: str, failure: str | None = None, skip: str | None = None):
        nonlocal failures, skipped
        body = ""
        if failure is not None:
            body, failures = f"<failure message={quoteattr(escape_text(failure))}/>", failures + 1
        elif skip is not None:
            body, skipped = f"<skipped message={quoteattr(escape_text(skip))}/>", skipped + 1
        cases.append(f'  <testcase classname="parity.{group}" name='
                     f'{quoteattr(escape_text(name))}>{body}</testcase>')

    for r in result.report.rows if result.report is not None else []:
        case("rows", r.name,
             f"{r.status}: relative to scale {_cell(r.rel_to_scale)}, torch "
             f"{format_shape(r.torch_shape)} vs flax {format_shape(r.jax_shape)}"
             if r.failed else None, r.status if not r.compared and not r.failed else None)
    if result.gradients is not None:
        g = result.gradients
        for r in g.rows:
            value = r.rel_l2 if g.rule == "relative L2" else r.rel_to_scale
            case("gradients", r.torch_name,
                 None if value <= g.tol else f"{g.rule} {_cell(value)} > {g.tol:.0e}")
    mutants = result.mutants
    if mutants is not None and mutants.not_scored:
        case("mutants", "mutation zoo", f"not run: {mutants.not_scored}")
    if mutants is not None and mutants.unproven:
        case("mutants", "mutation zoo", mutants.unproven)
    for m in mutants.results if mutants is not None else []:
        # a blind spot (below tolerance) counts as missed: a failure, as in the verdict
        judged_missed = m in mutants.missed
        case("mutants", f"{m.defect} at {m.site or '-'}",
             (f"{m.status}: {m.note}" if m.note else m.status) if judged_missed else None,
             f"{m.status}: {m.note}" if m.status != "caught" and not judged_missed else None)
    return ('<?xml version="1.0" encoding="utf-8"?>\n'
            f'<testsuite name="parity" tests="{len(cases)}" failures="{failures}" '
            f'skipped="{skipped}" errors="0">\n' + "\n".join(cases) + "\n</testsuite>\n")


def write_junit(result: CheckResult, path: str | os.PathLike) -> Path:
    """The JUnit XML file (its folder is created)."""
    path = Path(path)
    return write_report_files(path.parent, {path.name: junit_xml(result)})[0]
