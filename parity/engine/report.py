"""Writing a parity run for people: report.json, report.md and a per-block error plot."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from parity.engine.block_compare import FAIL, PASS, format_shape, verdict_line
from core.atomic_files import save_figure_atomic, write_text_atomic

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
        f"- weights: {run.weights}",
        f"- inputs: {run.inputs.description} (NHWC {format_shape(run.inputs.x.shape)})",
        f"- tolerance: max\\|diff\\| <= {layers.tol:.0e} x max(1, max\\|torch\\|) per block",
    ]
    if run.defect:
        lines.append(f"- injected defect (JAX side only): `{run.defect}`: {run.defect_summary}")
    lines += [f"- note: {note}" for note in run.notes]
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
        lines.append(f"| {i} | `{r.name}` | {format_shape(r.torch_shape)} | {_cell(r.max_abs)} | "
                     f"{_cell(r.scale)} | {_cell(r.rel_to_scale)} | {status} |")
    return "\n".join(lines) + "\n"


def plot_errors(run, dst: Path) -> None:
    """Relative error per block on a log axis, in execution order, with the tolerance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = run.layers.rows
    xs = np.arange(len(rows))
    rel = [r.rel_to_scale for r in rows]
    fig, ax = plt.subplots(figsize=(max(8.0, 0.2 * len(rows) + 2), 5.0))
    try:
        finite = [v for v in rel if v is not None and np.isfinite(v)]
        top = max(finite + [run.layers.tol]) * 10
        values = [top if v is None or not np.isfinite(v) else max(v, PLOT_FLOOR) for v in rel]
        colors = ["tab:blue" if r.status == PASS else "tab:red" for r in rows]
        ax.plot(xs, values, color="0.7", linewidth=0.8, zorder=1)
        ax.scatter(xs, values, c=colors, s=18, zorder=2)
        for x, r in zip(xs, rows):
            if r.status not in (PASS, FAIL):  # no number: drawn at the top, labelled
                ax.scatter([x], [top], marker="X", s=60, color="tab:red", zorder=3)
                ax.annotate(r.status, (x, top / 30), rotation=90, fontsize=6,
                            color="tab:red", ha="right", va="top")
        ax.axhline(run.layers.tol, color="tab:red", linestyle="--", linewidth=1,
                   label=f"tolerance {run.layers.tol:.0e}")
        ax.set_yscale("log")
        if any(v == 0 for v in rel):
            ax.text(0.01, 0.02, f"exact agreement (0) is drawn at {PLOT_FLOOR:.0e}",
                    transform=ax.transAxes, fontsize=7, color="0.4")
        ax.set_xticks(xs)
        ax.set_xticklabels([r.name for r in rows], rotation=90, fontsize=6)
        ax.set_ylabel("max|jax - torch| / max(1, max|torch|)")
        title = "per-block error, execution order"
        if run.defect:
            title += f" (injected: {run.defect})"
        if run.layers.first_divergence:
            title += f"; first divergence: {run.layers.first_divergence}"
        ax.set_title(title, fontsize=9)
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        save_figure_atomic(fig, dst)
    finally:
        plt.close(fig)


def write_report(run, folder: str | os.PathLike) -> dict[str, Path]:
    """report.json, report.md and per_layer_error.png in `folder` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "markdown": folder / "report.md",
             "plot": folder / PLOT_NAME}
    write_text_atomic(paths["json"], json.dumps(report_dict(run), indent=2) + "\n")
    write_text_atomic(paths["markdown"], report_markdown(run))
    plot_errors(run, paths["plot"])
    return paths


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


def write_gradient_report(report, folder: str | os.PathLike) -> dict[str, Path]:
    """gradients.json, gradients.md and gradient_error.png in `folder` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "gradients.json", "markdown": folder / "gradients.md",
             "plot": folder / GRADIENT_PLOT_NAME}
    write_text_atomic(paths["json"], json.dumps(gradient_report_dict(report), indent=2) + "\n")
    lines = ["# DLN gradient parity: PyTorch vs Flax", ""]
    lines += [f"- {line}" for line in report.summary_lines()]
    lines += ["", f"![per-tensor error]({GRADIENT_PLOT_NAME})", "",
              "| tensor | kind | float64 rel. L2 | float32 rel. L2 | Adam step rel. L2 |",
              "| --- | --- | ---: | ---: | ---: |"]
    f32 = report.gradients_float32 or [None] * len(report.gradients)
    for g, g32, a in zip(report.gradients, f32, report.adam_same_gradients):
        lines.append(f"| `{g.torch_name}` | {g.kind} | {g.rel_l2:.2e} | "
                     f"{'-' if g32 is None else f'{g32.rel_l2:.2e}'} | {a.rel_l2:.2e} |")
    write_text_atomic(paths["markdown"], "\n".join(lines) + "\n")
    plot_gradient_errors(report, paths["plot"])
    return paths
