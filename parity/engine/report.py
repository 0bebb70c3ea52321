"""Writing a parity run for people: report.json, report.md and a per-block error plot."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from parity.engine.block_compare import FAIL, PASS, escape_text, format_shape, verdict_line
from core.atomic_files import save_figure_atomic
from core.report_files import json_text
from core.report_files import write_report as write_report_files

PLOT_NAME = "per_layer_error.png"
PLOT_FLOOR = 1e-12  # exact agreement (0 error) is drawn here: a log axis has no zero


def report_dict(run) -> dict:
    """Everything a script needs from a ParityRun (JSON-safe: non-finite numbers are null)."""
    layers = run.layers
    return {
        "verdict": "pass" if run.passed else "diverges",
        "passed": run.passed,
        "first_divergence": layers.first_divergence,
        "tolerance": layers.tol,
        "tolerance_rule": "max|jax - torch| <= tol * max(1, max|torch|), per block",
        "config": dataclasses.asdict(run.config),
        "jax_config": dataclasses.asdict(run.jax_config),
        "weights": run.weights,
        "inputs": {"shape_nhwc": list(run.inputs.x.shape), "description": run.inputs.description},
        "defect": None if run.defect is None else {"name": run.defect,
                                                   "summary": run.defect_summary},
        "blocks_compared": len(layers.rows),
        "blocks_failing": len(layers.failures),
        "notes": run.notes,
        "blocks": [row.as_dict() for row in layers.rows],
    }


def _cell(value) -> str:
    return "-" if value is None else f"{value:.2e}"


def report_markdown(run) -> str:
    layers = run.layers
    lines = [
        "# DLN parity report: PyTorch reference vs Flax port",
        "",
        f"**{verdict_line(layers)}**",
        "",
        f"- first divergence: `{layers.first_divergence}`" if layers.first_divergence
        else "- first divergence: none",
        f"- variant: `{run.config.variant_string()}`, dim {run.config.dim}",
        f"- weights: {escape_text(run.weights)}",
        f"- inputs: {escape_text(run.inputs.description)} (NHWC {format_shape(run.inputs.x.shape)})",
        f"- tolerance: max\\|diff\\| <= {layers.tol:.0e} x max(1, max\\|torch\\|) per block",
    ]
    if run.defect:
        lines.append(f"- injected defect (JAX side only): `{run.defect}`: {run.defect_summary}")
    lines += [f"- note: {escape_text(note)}" for note in run.notes]
    # run times are printed by `dln parity`, not written here: the same run gives
    # byte-identical report files
    lines += ["", f"![per-block error]({PLOT_NAME})", "",
              "| # | block (torch name) | shape | max abs error | scale | relative to scale | status |",
              "| ---: | --- | --- | ---: | ---: | ---: | --- |"]
    for i, r in enumerate(layers.rows, 1):
        status = r.status if r.status != PASS else "pass"
        if r.jax_shape is not None and r.jax_shape != r.torch_shape:
            status += f" (JAX {format_shape(r.jax_shape)})"
        if r.name == layers.first_divergence:
            status = f"**{status} (first divergence)**"
        lines.append(f"| {i} | `{escape_text(r.name)}` | {format_shape(r.torch_shape)} | {_cell(r.max_abs)} | "
                     f"{_cell(r.scale)} | {_cell(r.rel_to_scale)} | {status} |")
    return "\n".join(lines) + "\n"


def plot_errors(run, dst: Path) -> None:
    """Relative error per block on a log axis, in execution order, with the tolerance."""
    title = "per-block error, execution order"
    if run.defect:
        title += f" (injected: {run.defect})"
    plot_rows(run.layers, dst, title)


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
        if layers.first_divergence:
            title += f"; first divergence: {escape_text(layers.first_divergence)}"
        ax.set_title(title, fontsize=9, pad=24)
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, fontsize=8,
                  frameon=False, borderaxespad=0.2)
        fig.tight_layout()
        save_figure_atomic(fig, dst)
    finally:
        plt.close(fig)


def write_report(run, folder: str | os.PathLike) -> list[Path]:
    """report.json, report.md and per_layer_error.png in `folder` (created), in that order."""
    return write_report_files(folder, {"report.json": json_text(report_dict(run)),
                                       "report.md": report_markdown(run),
                                       PLOT_NAME: lambda dst: plot_errors(run, dst)})


# ---- gradient parity -----------------------------------------------------------------------
GRADIENT_PLOT_NAME = "gradient_error.png"


def gradient_report_dict(report) -> dict:
    def rows(errors):
        return None if errors is None else [
            {"torch_name": e.torch_name, "kind": e.kind, "shape": list(e.shape),
             "rel_l2": e.rel_l2, "reference_norm": e.reference_norm} for e in errors]

    return {
        "passed": report.passed,
        "loss": report.loss_name,
        "loss_float64": {"torch": report.loss_torch, "jax": report.loss_jax},
        "limits": {"gradients_float64": report.grad_rtol, "adam_step": report.adam_rtol},
        "worst": {label: None if errors is None else {
            "torch_name": report.worst(errors).torch_name, "rel_l2": report.worst(errors).rel_l2}
            for label, errors in (("gradients_float64", report.gradients),
                                  ("adam_same_gradients", report.adam_same_gradients),
                                  ("adam_own_gradients", report.adam_own_gradients),
                                  ("gradients_float32", report.gradients_float32),
                                  ("adam_own_float32", report.adam_own_float32))},
        "gradients_float64": rows(report.gradients),
        "adam_same_gradients": rows(report.adam_same_gradients),
        "adam_own_gradients": rows(report.adam_own_gradients),
        "gradients_float32": rows(report.gradients_float32),
        "adam_own_float32": rows(report.adam_own_float32),
    }


def plot_gradient_errors(report, dst: Path) -> None:
    """Per-tensor relative L2 error on a log axis: float64 gradients (checked), float32
    gradients (reported) and the Adam step, with the two limits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [e.torch_name for e in report.gradients]
    xs = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.12 * len(names) + 2), 5.0))
    try:
        series = [("gradients float64 (checked)", report.gradients, "tab:blue"),
                  ("gradients float32 (reported)", report.gradients_float32, "tab:orange"),
                  ("Adam step, same gradients", report.adam_same_gradients, "tab:green")]
        for label, errors, color in series:
            if errors is not None:
                ax.scatter(xs, [max(e.rel_l2, PLOT_FLOOR) for e in errors], s=10, color=color,
                           label=label)
        ax.axhline(report.grad_rtol, color="tab:blue", linestyle="--", linewidth=1,
                   label=f"gradient limit {report.grad_rtol:.0e}")
        ax.axhline(report.adam_rtol, color="tab:green", linestyle=":", linewidth=1,
                   label=f"Adam limit {report.adam_rtol:.0e}")
        ax.set_yscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels(names, rotation=90, fontsize=4)
        ax.set_ylabel("||jax - torch|| / ||torch|| per tensor")
        ax.set_title(f"gradient parity, {report.loss_name}", fontsize=9)
        ax.legend(loc="upper left", fontsize=7)
        fig.tight_layout()
        save_figure_atomic(fig, dst)
    finally:
        plt.close(fig)


def write_gradient_report(report, folder: str | os.PathLike) -> list[Path]:
    """gradients.json, gradients.md and gradient_error.png in `folder` (created), in that
    order."""
    return write_report_files(folder, {
        "gradients.json": json_text(gradient_report_dict(report)),
        "gradients.md": gradient_report_markdown(report),
        GRADIENT_PLOT_NAME: lambda dst: plot_gradient_errors(report, dst)})


def gradient_report_markdown(report) -> str:
    lines = ["# DLN gradient parity: PyTorch vs Flax", ""]
    lines += [f"- {line}" for line in report.summary_lines()]
    lines += ["", f"![per-tensor error]({GRADIENT_PLOT_NAME})", "",
              "| tensor | kind | float64 rel. L2 | float32 rel. L2 | Adam step rel. L2 |",
              "| --- | --- | ---: | ---: | ---: |"]
    f32 = report.gradients_float32 or [None] * len(report.gradients)
    for g, g32, a in zip(report.gradients, f32, report.adam_same_gradients):
        lines.append(f"| `{g.torch_name}` | {g.kind} | {g.rel_l2:.2e} | "
                     f"{'-' if g32 is None else f'{g32.rel_l2:.2e}'} | {a.rel_l2:.2e} |")
    return "\n".join(lines) + "\n"
