"""Writing a `dln check` result: report.json, report.md, the plot, mutants.json, JUnit XML."""

from __future__ import annotations

import os
from pathlib import Path
from xml.sax.saxutils import quoteattr

from core.report_files import json_text
from core.report_files import write_report as write_report_files
from parity.engine.block_compare import escape_text, format_shape, verdict_line
from parity.engine.report import PLOT_NAME, plot_rows


def report_dict(result) -> dict:
    layers = result.report
    out = {
        "passed": result.passed,
        "forward_passed": layers.passed,
        "first_divergence": layers.first_divergence_module,
        "first_divergence_row": layers.first_divergence,
        "tolerance": layers.tol,
        "tolerance_rule": "max|flax - torch| <= tol * max(1, max|torch|), per row",
        "torch": result.torch_spec,
        "flax": result.flax_spec,
        "weights": result.weights,
        "inputs": {"shape": list(result.input_shape), "layout": "torch (channels first)",
                   "distribution": "uniform [0, 1)", "seed": result.seed},
        "rows_compared": len(layers.compared),
        "rows_failing": len(layers.failures),
        "rows": [row.as_dict() for row in layers.rows],
    }
    if result.gradients is not None:
        out["gradients"] = {"passed": result.gradients.passed,
                            "loss": "sum of all outputs",
                            "rows": [r.as_dict() for r in result.gradients.rows]}
    if result.mutants is not None:
        out["mutation_score"] = result.mutants.score
        out["mutants_missed"] = [f"{m.defect} at {m.site}" for m in result.mutants.missed]
    return out


def mutants_list(result) -> list[dict]:
    return [m.as_dict() for m in result.mutants.results]


def _md(text) -> str:
    """Text for a Markdown table cell: one line, pipes escaped."""
    return escape_text(text).replace("|", "\\|")


def _cell(value) -> str:
    return "-" if value is None else f"{value:.2e}"


def report_markdown(result) -> str:
    layers = result.report
    first = layers.first_divergence_module
    lines = ["# Parity check: PyTorch model vs Flax port", "",
             f"**{escape_text(verdict_line(layers))}**", "",
             f"- first divergence: `{escape_text(first)}`" if first else "- first divergence: none",
             f"- torch: `{escape_text(result.torch_spec)}`; Flax: `{escape_text(result.flax_spec)}`",
             f"- weights: {escape_text(result.weights)}",
             f"- inputs: uniform [0, 1), shape {format_shape(result.input_shape)} (torch "
             f"layout), seed {result.seed}",
             f"- tolerance: max\\|diff\\| <= {layers.tol:.0e} x max(1, max\\|torch\\|) per row"]
    if result.mutants is not None:
        lines.append(f"- {escape_text(result.mutants.summary())}")
    if result.gradients is not None:
        lines.append(f"- {escape_text(result.gradients.summary())}")
    lines += ["", f"![per-row error]({PLOT_NAME})", "",
              "| # | torch module | Flax path | shape | max abs error | relative to scale | status |",
              "| ---: | --- | --- | --- | ---: | ---: | --- |"]
    for i, r in enumerate(layers.rows, 1):
        status = r.status
        if r.failed and r.name == layers.first_divergence:
            status = f"**{status} (first divergence)**"
        shape = r.torch_shape if r.torch_shape is not None else r.jax_shape
        lines.append(f"| {i} | `{_md(r.name) if r.module is not None else '-'}` | "
                     f"`{_md(r.flax_name or '-')}` | {format_shape(shape)} | "
                     f"{_cell(r.max_abs)} | {_cell(r.rel_to_scale)} | {status} |")
    if result.mutants is not None:
        lines += ["", "## Mutants (JAX side only)", "",
                  "| defect | site | status | first divergence | max rel. error | note |",
                  "| --- | --- | --- | --- | ---: | --- |"]
        for m in result.mutants.results:
            lines.append(f"| {m.defect} | {_md(m.site or '-')} | {m.status} | "
                         f"{_md(m.first_divergence or '-')} | {_cell(m.max_rel_error)} | "
                         f"{_md(m.note)} |")
    return "\n".join(lines) + "\n"


def junit_xml(result) -> str:
    """One testcase per row (compared or one-sided) and per mutant."""
    cases = []
    for r in result.report.rows:
        body = ""
        if r.failed:
            msg = f"{r.status}: relative to scale {_cell(r.rel_to_scale)}, torch " \
                  f"{format_shape(r.torch_shape)} vs flax {format_shape(r.jax_shape)}"
            body = f"<failure message={quoteattr(msg)}/>"
        elif not r.compared:
            body = f"<skipped message={quoteattr(r.status)}/>"
        cases.append(f'  <testcase classname="parity.blocks" name={quoteattr(escape_text(r.name))}>'
                     f"{body}</testcase>")
    mutants = result.mutants.results if result.mutants is not None else []
    for m in mutants:
        body = ""
        if m.status == "missed":
            body = f"<failure message={quoteattr(escape_text(m.note or 'missed'))}/>"
        elif m.status != "caught":
            body = f"<skipped message={quoteattr(escape_text(m.status + ': ' + m.note))}/>"
        name = f"{m.defect} at {m.site or '-'}"
        cases.append(f'  <testcase classname="parity.mutants" name={quoteattr(escape_text(name))}>'
                     f"{body}</testcase>")
    failures = sum(r.failed for r in result.report.rows) + sum(m.status == "missed"
                                                               for m in mutants)
    skipped = sum(not r.compared and not r.failed for r in result.report.rows) + \
        sum(m.status not in ("caught", "missed") for m in mutants)
    return ('<?xml version="1.0" encoding="utf-8"?>\n'
            f'<testsuite name="dln check" tests="{len(cases)}" failures="{failures}" '
            f'skipped="{skipped}" errors="0">\n' + "\n".join(cases) + "\n</testsuite>\n")


def write_check_report(result, folder: str | os.PathLike) -> list[Path]:
    """report.json, report.md, per_layer_error.png (and mutants.json) in `folder`."""
    files = {"report.json": json_text(report_dict(result)),
             "report.md": report_markdown(result),
             PLOT_NAME: lambda dst: plot_rows(result.report, dst,
                                              "per-row error, torch execution order")}
    if result.mutants is not None:
        files["mutants.json"] = json_text(mutants_list(result))
    return write_report_files(folder, files)


def write_junit(result, path: str | os.PathLike) -> Path:
    """The JUnit XML file (its folder is created)."""
    path = Path(path)
    return write_report_files(path.parent, {path.name: junit_xml(result)})[0]
