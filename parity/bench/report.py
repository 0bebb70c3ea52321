"""Text, Markdown and a PNG for one `dln bench` result (the dict parity.bench.benchmark returns)."""

from __future__ import annotations

from pathlib import Path
from core.atomic_files import save_figure_atomic
from core.report_files import json_text
from core.report_files import write_report as write_report_files


def _ratio_lines(result: dict) -> list[str]:
    backends = result["backends"]
    jax = backends.get("jax", {})
    lines = []
    if jax.get("available"):
        for other in ("torch", "torch-compile"):
            if backends.get(other, {}).get("available"):
                ratio = backends[other]["median_ms"] / jax["median_ms"]
                verdict = f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"
                lines.append(f"jax is {verdict} than {other} (median per-image latency, same run)")
        if backends.get("nnx", {}).get("available"):
            ratio = backends["nnx"]["median_ms"] / jax["median_ms"]
            lines.append(f"nnx takes {ratio:.3f}x the time of jax, the Linen port (median "
                         "per-image latency, same run)")
    return lines


def backend_table(result: dict) -> list[str]:
    lines = ["| backend | median ms/img | p25-p75 ms | min-max ms | runs | GFLOP/s | "
             "fraction of peak (best run) | peak RSS MiB | note |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, fig in result["backends"].items():
        if not fig.get("available"):
            lines.append(f"| {name} | - | - | - | - | - | - | - | unavailable: {fig['reason']} |")
            continue
        lines.append(
            f"| {name} | {fig['median_ms']:,.1f} | {fig['p25_ms']:,.1f}-{fig['p75_ms']:,.1f} | "
            f"{fig['min_ms']:,.1f}-{fig['max_ms']:,.1f} | {fig['runs']} | "
            f"{fig['gflops_per_s']:,.1f} | {fig['peak_fraction']:.1%} "
            f"({fig['best_peak_fraction']:.1%}) | "
            f"{fig['peak_rss_mib']:,.0f} | {fig['flag'] or ''} |")
    return lines


def floor_lines(result: dict) -> list[str]:
    out = []
    for f in result["floors"]:
        verdict = "PASS" if f["passed"] else "MISSED"
        value = f["value"]
        shown = f"{value:.1%}" if "fraction" in f["floor"] else f"{value:,.2f}"
        limit = f"{f['threshold']:.0%}" if "fraction" in f["floor"] else f"{f['threshold']:,}"
        bound = "at most" if "at most" in f["floor"] else "floor"
        out.append(f"- {verdict}: {f['floor']}: {shown} ({bound} {limit})"
                   + (f" [{f['note']}]" if f.get("note") else ""))
    return out


def profile_lines(profile: dict, top: int = 8) -> list[str]:
    """The JAX forward's time by kind of op and its slowest layers."""
    lines = [f"JAX profile (one traced forward: wall {profile['wall_ms']:,.0f} ms, op time "
             f"{profile['op_ms_total']:,.0f} ms summed over threads):", "",
             "| kind of op | ms | share |", "| --- | --- | --- |"]
    lines += [f"| {k['kind']} | {k['ms']:,.1f} | {k['share']:.1%} |" for k in profile["by_kind"]]
    lines += ["", "| slowest layers | ms | GFLOP | GFLOP/s |", "| --- | --- | --- | --- |"]
    for row in profile["layers"][:top]:
        rate = "-" if row["gflops_per_s"] is None else f"{row['gflops_per_s']:,.0f}"
        lines.append(f"| {row['layer']} | {row['ms']:,.1f} | {row['gflop']:.2f} | {rate} |")
    return lines


def summary_text(result: dict) -> str:
    peak = result["peak"]
    size = result["size"]
    libs = ", ".join(f"{k} {v:,.0f}" for k, v in peak["by_library"].items())
    machine = result.get("machine", {})
    lines = [
        f"measured on {machine.get('cpu') or 'an unknown CPU'}, {machine.get('cpus')} cores",
        f"DLN forward, {size['height']}x{size['width']} (HxW), batch {result['batch']}, "
        f"dim {result['config']['dim']}: {result['gflop_per_image']:.2f} GFLOP per image "
        f"(2 x multiply-adds of every conv and dense layer)",
        f"float32 matmul peak of this machine: {peak['gflops_per_s']:,.1f} GFLOP/s "
        f"({peak['library']}; {peak['matrix_n']}^2 products, best run; by library: {libs}; "
        f"median round {peak['median_round_gflops_per_s']:,.0f})",
        "",
        *backend_table(result),
        "",
        *_ratio_lines(result),
        *floor_lines(result),
    ]
    profile = result["backends"].get("jax", {}).get("profile")
    if profile:
        lines += ["", *profile_lines(profile)]
    load = result.get("machine", {}).get("load_average_at_end")
    if load:
        lines.append(f"load average at the end: {', '.join(f'{v:.2f}' for v in load)} "
                     f"on {result['machine'].get('cpus')} CPUs (other programs inflate latency)")
    return "\n".join(lines) + "\n"


def plot_latency(result: dict, dst: Path) -> None:
    """Per-image latency per backend (median bar, min-max whisker) and the latency the
    matmul peak would allow, which no backend can beat."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, f in result["backends"].items() if f.get("available")]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    try:
        med = [result["backends"][n]["median_ms"] for n in names]
        lo = [m - result["backends"][n]["min_ms"] for n, m in zip(names, med)]
        hi = [result["backends"][n]["max_ms"] - m for n, m in zip(names, med)]
        ax.bar(names, med, yerr=[lo, hi], capsize=6, color="tab:blue", alpha=0.8)
        bound = result["gflop_per_image"] / result["peak"]["gflops_per_s"] * 1e3
        ax.axhline(bound, color="tab:red", linestyle="--",
                   label=f"at the matmul peak: {bound:,.0f} ms")
        tops = [result["backends"][n]["max_ms"] for n in names]
        for x, m, top, n in zip(range(len(names)), med, tops, names):
            ax.annotate(f"{m:,.0f} ms\n{result['backends'][n]['peak_fraction']:.0%} of peak",
                        (x, top), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 4), textcoords="offset points")
        ax.set_ylim(0, max(tops + [bound]) * 1.2)
        ax.set_ylabel("ms per image (median; whiskers min-max)")
        size = result["size"]
        ax.set_title(f"DLN {size['height']}x{size['width']}, batch {result['batch']}: "
                     "latency per backend", fontsize=9)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        save_figure_atomic(fig, dst)
    finally:
        plt.close(fig)


def write_report(result: dict, folder) -> list[Path]:
    """bench.json, bench.md and bench_latency.png in `folder` (created), in that order."""
    return write_report_files(folder, {"bench.json": json_text(result),
                                       "bench.md": "# dln bench\n\n" + summary_text(result),
                                       "bench_latency.png": lambda dst: plot_latency(result, dst)})


def plot_workload(result: dict, dst: Path) -> None:
    """End-to-end seconds per row of a `--workload` run (bar per row, peak RSS noted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    labels = [r["backend"] + (f"\n({r['cache']} cache)" if r.get("cache") else "") for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    try:
        bars = ax.bar(labels, [r["total_s"] for r in rows], color="tab:blue", alpha=0.8)
        for bar, r in zip(bars, rows):
            ax.annotate(f"{r['total_s']:.0f} s\n{r['peak_rss_mib']:.0f} MiB",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points")
        ax.set_ylim(0, max(r["total_s"] for r in rows) * 1.25 if rows else 1)
        ax.set_ylabel("seconds, end to end (one process each)")
        machine = result.get("machine", {})
        ax.set_title(f"workload {result['workload']}: {rows[0]['images'] if rows else 0} "
                     f"image(s); {machine.get('cpu')}, {machine.get('cpus')} cores", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        fig.tight_layout()
        save_figure_atomic(fig, dst)
    finally:
        plt.close(fig)


def write_workload_report(result: dict, text: str, folder) -> list[Path]:
    """workload_<name>.json, .md and .png in `folder`."""
    name = f"workload_{result['workload']}"
    return write_report_files(folder, {f"{name}.json": json_text(result),
                                       f"{name}.md": f"# dln bench --workload "
                                                     f"{result['workload']}\n\n{text}",
                                       f"{name}.png": lambda dst: plot_workload(result, dst)})
