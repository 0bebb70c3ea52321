"""Text, Markdown and a PNG for one `dln bench --workload train` result (parity.bench.train_bench)."""

from __future__ import annotations

from pathlib import Path

from core.atomic_files import save_figure_atomic
from core.report_files import json_text
from core.report_files import write_report as write_report_files
from parity.bench.report import floor_lines

LABELS = {"jax": "JAX port (training rewrites)", "jax-plain": "JAX port without the rewrites",
          "torch": "PyTorch eager", "torch-compile": "torch.compile (Inductor)"}


def row_table(result: dict) -> list[str]:
    peak = result["peak"]["gflops_per_s"]
    lines = ["| backend | median s/step (p25-p75) | steps/s | GFLOP/s | fraction of "
             f"{peak:,.0f} GFLOP/s peak (best step) | peak RSS MiB | note |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        name = LABELS.get(r["backend"], r["backend"])
        if not r.get("available"):
            lines.append(f"| {name} | - | - | - | - | - | unavailable: {r['reason']} |")
            continue
        lines.append(
            f"| {name} | {r['median_s_per_step']:,.3f} ({r['p25_s']:,.3f}-{r['p75_s']:,.3f}) | "
            f"{r['steps_per_s']:.3f} | {r['gflops_per_s']:,.1f} | {r['peak_fraction']:.1%} "
            f"({r['best_peak_fraction']:.1%}) | {r['peak_rss_mib']:,.0f} | {r['flag'] or ''} |")
    return lines


def ratio_lines(result: dict) -> list[str]:
    lines = []
    for other, ratio in result["speedup_of_jax_over"].items():
        verdict = f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"
        lines.append(f"jax's training step is {verdict} than {other}'s (median, same run)")
    return lines


def profile_lines(profile: dict) -> list[str]:
    lines = [f"JAX training step profile (one traced step: wall {profile['wall_ms']:,.0f} ms, "
             f"op time {profile['op_ms_total']:,.0f} ms summed over threads):", "",
             "| kind of work | ms | share | GFLOP | GFLOP/s |", "| --- | --- | --- | --- | --- |"]
    for k in profile["by_kind"]:
        gflop = f"{k['gflop']:.2f}" if k.get("gflop") else "-"
        rate = f"{k['gflops_per_s']:,.0f}" if k.get("gflops_per_s") else "-"
        lines.append(f"| {k['kind']} | {k['ms']:,.1f} | {k['share']:.1%} | {gflop} | {rate} |")
    return lines


def train_text(result: dict) -> str:
    peak = result["peak"]
    machine = result.get("machine", {})
    libs = ", ".join(f"{k} {v:,.0f}" for k, v in peak["by_library"].items())
    lines = [
        f"measured on {machine.get('cpu') or 'an unknown CPU'}, {machine.get('cpus')} cores",
        f"DLN training step (loss, gradients, Adam), batch {result['batch']} x "
        f"{result['patch']}x{result['patch']} crops, dim {result['config']['dim']}: "
        f"{result['gflop_per_step']:.2f} GFLOP per step (forward + backward: 3 x the forward's "
        "multiply-adds less feat1's input gradient)",
        f"float32 matmul peak of this machine: {peak['gflops_per_s']:,.1f} GFLOP/s "
        f"({peak['library']}; {peak['matrix_n']}^2 products, best run; by library: {libs}; "
        f"median round {peak['median_round_gflops_per_s']:,.0f})",
        "", *row_table(result), "", *ratio_lines(result), *floor_lines(result)]
    if result.get("profile"):
        lines += ["", *profile_lines(result["profile"])]
    load = machine.get("load_average_at_end")
    if load:
        lines.append(f"load average at the end: {', '.join(f'{v:.2f}' for v in load)} "
                     f"on {machine.get('cpus')} CPUs (other programs inflate step times)")
    return "\n".join(lines) + "\n"


def plot_steps(result: dict, dst: Path) -> None:
    """Seconds per step per backend (median bar, min-max whisker) and the step time the
    matmul peak would allow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r.get("available")]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    try:
        names = [r["backend"] for r in rows]
        med = [r["median_s_per_step"] for r in rows]
        lo = [m - r["min_s"] for m, r in zip(med, rows)]
        hi = [r["max_s"] - m for m, r in zip(med, rows)]
        ax.bar(names, med, yerr=[lo, hi], capsize=6, color="tab:blue", alpha=0.8)
        bound = result["gflop_per_step"] / result["peak"]["gflops_per_s"]
        ax.axhline(bound, color="tab:red", linestyle="--",
                   label=f"at the matmul peak: {bound:.2f} s")
        for x, (m, r) in enumerate(zip(med, rows)):
            ax.annotate(f"{m:.2f} s\n{r['peak_fraction']:.0%} of peak", (x, r["max_s"]),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 4),
                        textcoords="offset points")
        ax.set_ylim(0, max([r["max_s"] for r in rows] + [bound]) * 1.25)
        ax.set_ylabel("seconds per training step (median; min-max)")
        machine = result.get("machine", {})
        ax.set_title(f"DLN training step, batch {result['batch']} x {result['patch']}^2; "
                     f"{machine.get('cpu')}, {machine.get('cpus')} cores", fontsize=8)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        save_figure_atomic(fig, dst)
    finally:
        plt.close(fig)


def write_train_report(result: dict, folder) -> list[Path]:
    """workload_train.json, .md and .png in `folder`."""
    return write_report_files(folder, {
        "workload_train.json": json_text(result),
        "workload_train.md": "# dln bench --workload train\n\n" + train_text(result),
        "workload_train.png": lambda dst: plot_steps(result, dst)})
