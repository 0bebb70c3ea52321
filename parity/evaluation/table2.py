"""Table 2 of the report, measured honestly for any set of models.

For every model (a .pth, .safetensors or Orbax folder of any variant) and backend
(jax: the Flax Linen port, nnx: the Flax NNX port, torch):
- parameters, counted from the tensors in the file;
- model size, the column the report left out ("due to issues encountered during the
  JAX implementation"): bytes on disk of the model as a .pth, a .safetensors file and
  an Orbax checkpoint folder (each written by `dln convert`, weights.sizes), and bytes
  of its float32 parameters;
- time per image: median of N synchronised forward passes after a warm-up (JAX:
  block_until_ready; PyTorch CPU is synchronous), at the dataset's resolution (the
  most common image size), with the GFLOP/s it implies (parity.bench.flops);
- PSNR, SSIM and theta with the authors' protocol: output
  quantised x255 / clip / truncate, then core.evaluation.evaluate_pair per image;
  means over images.
The published rows (the report's Table 2) are carried as constants and printed
beside the measured ones, marked as published; nothing here re-derives them.
"""

from __future__ import annotations

from core.errors import UserError
import collections
import dataclasses
from pathlib import Path

import numpy as np

from core.image_pairs import ImagePair, open_heldout_pairs
from parity.bench.benchmark import machine_description
from parity.bench.flops import network_flops
from core.atomic_files import save_figure_atomic
from core.report_files import json_text
from core.report_files import write_report as write_report_files
from core.text import escape_markdown

# Table 2 of the report, verbatim. (time in ms; None = "-").
PUBLISHED_ROWS = (
    {"row": "Paper", "params": "700k", "time_ms": 6.53,
     "voc": (23.82, 0.91, None), "lol": (21.94, 0.80, None)},
    {"row": "Original weights", "params": "700k", "time_ms": 3.67,
     "voc": (25.19, 0.89, 2.52), "lol": (21.94, 0.84, 3.67)},
    {"row": "Re-trained (PyTorch)", "params": "700k", "time_ms": 3.59,
     "voc": (21.27, 0.84, 3.38), "lol": (19.53, 0.79, 4.75)},
    {"row": "JAX port", "params": "421k", "time_ms": 2.75,
     "voc": (27.77, 0.90, 3.23), "lol": (20.45, 0.80, 4.90)},
)
PUBLISHED_GFLOP = 332.0   # the network's FLOP count for one 400 x 600 (HxW) image
PUBLISHED_NOTE = ("published figures, copied from the report (not measured here); their times "
                  "were taken without waiting for the GPU, and the JAX port's 421k parameters "
                  "come from its 1-D convolutions, a 4*dim feature block and an FA outlayer "
                  "without bias (the correct network has 700,586)")
COLUMN_GROUPS = ("voc", "lol")
DEFAULT_REPEATS = 5
GRID_IMAGES = 3


class Table2Error(UserError, ValueError):
    """A bad --model / --data argument; one line for the user."""


@dataclasses.dataclass
class ModelRow:
    name: str
    backend: str
    source: str
    variant: str
    parameters: int
    resolution: tuple[int, int]
    time_ms: float
    time_runs_ms: list[float]
    gflops_per_s: float
    per_image: list[dict]
    outputs: dict[str, np.ndarray]  # a few quantised outputs, for the grid
    sizes: dict = dataclasses.field(default_factory=dict)  # weights.sizes.checkpoint_sizes

    def mean(self, key: str) -> float:
        return float(np.mean([m[key] for m in self.per_image]))

    def as_dict(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "outputs"}
        out["resolution"] = {"height": self.resolution[0], "width": self.resolution[1]}
        out.update({f"mean_{k}": self.mean(k) for k in ("psnr", "ssim", "theta")})
        return out


@dataclasses.dataclass
class Table2Result:
    data: str
    column: str
    rows: list[ModelRow]
    pairs: list[ImagePair]
    repeats: int
    problems: list[str]
    machine: dict = dataclasses.field(default_factory=lambda: machine_description())

    def as_dict(self) -> dict:
        published = [{**r, "implied_gflops_per_s": PUBLISHED_GFLOP / (r["time_ms"] * 1e-3)}
                     for r in PUBLISHED_ROWS]
        return {"data": self.data, "images": [p.name for p in self.pairs],
                "column_group": self.column, "timing_repeats": self.repeats,
                "metrics_protocol": "uint8 truncation; PSNR range 255; scikit-image default "
                                    "SSIM averaged over channels; theta in degrees (XYZ)",
                "measured": [r.as_dict() for r in self.rows],
                "published": {"note": PUBLISHED_NOTE, "rows": published},
                "problems": self.problems, "machine": self.machine}


# ---- arguments -------------------------------------------------------------------------------
def parse_model(text: str) -> tuple[str, str]:
    """'NAME=FILE' -> (name, file); a bare FILE is named after its stem."""
    name, sep, path = text.partition("=")
    if not sep:
        name, path = Path(text).stem, text
    name, path = name.strip(), path.strip()
    if not name or not path:
        raise Table2Error(f"--model must look like NAME=FILE, got {text!r}")
    if not (Path(path).is_file() or Path(path).is_dir()):  # a folder: an Orbax checkpoint
        raise Table2Error(f"--model {name}: {path}: no such file or folder")
    return name, path


def common_resolution(pairs: list[ImagePair]) -> tuple[int, int]:
    """The most common (height, width) of the inputs; ties go to the first seen."""
    counts = collections.Counter(p.low.shape[:2] for p in pairs)
    return max(counts, key=lambda s: (counts[s], -list(counts).index(s)))


# ---- measuring one model ---------------------------------------------------------------------
def evaluate_model(name: str, ckpt, backend: str, pairs: list[ImagePair], repeats: int,
                   keep_outputs: int = GRID_IMAGES, tick=None,
                   sizes: dict | None = None) -> ModelRow:
    """One model (a loaded weights.convert.Checkpoint) on one backend; `sizes`: its
    weights.sizes.checkpoint_sizes, carried into the row."""
    from core.data import to_float
    from core.images import quantize
    from core.evaluation import evaluate_pair
    from frameworks.predictor import Predictor
    from parity.bench.backends import time_steps

    path = ckpt.source
    predictor = Predictor(ckpt, backend, channels_last=True)  # torch's faster format here
    per_image, outputs = [], {}
    for i, pair in enumerate(pairs):
        # each image as its memory plan says (whole, or tiled when that does not fit)
        pred = quantize(predictor.predict(to_float(pair.low)))
        per_image.append({"image": pair.name, **evaluate_pair(pred, pair.high)})
        if i < keep_outputs:
            outputs[pair.name] = pred
        if tick:
            tick()
    height, width = common_resolution(pairs)
    first = to_float(next(p for p in pairs if p.low.shape[:2] == (height, width)).low)
    if predictor.plan(height, width, tile="auto", own_size=True).mode == "whole":
        predictor.prepare(first[None])  # places the input; warm-up run included
        step = predictor.step
    else:   # too large to run whole here: the time of the tiled run users get
        def step():
            predictor.predict(first)
    runs = [s * 1e3 for s in time_steps(step, repeats)]
    median_ms = float(np.median(runs))
    flop = network_flops(ckpt.config, height, width)
    return ModelRow(name, backend, str(path), ckpt.config.variant_string(), ckpt.parameter_count,
                    (height, width), median_ms, runs, flop / (median_ms * 1e-3) / 1e9,
                    per_image, outputs, dict(sizes or {}))


def run_table2(models: list[tuple[str, str]], data: str, backends: tuple[str, ...] = ("jax",),
               repeats: int = DEFAULT_REPEATS, column: str | None = None,
               show_progress: bool = True, sizes: bool = True) -> Table2Result:
    """Every model on every backend. sizes=False leaves the model size column out (it
    writes each model in the three formats to a temporary folder: ~1.5 s per model)."""
    from core.progress import progress
    from weights.convert import load_checkpoint
    from weights.sizes import checkpoint_sizes

    if not models:
        raise Table2Error("give at least one --model NAME=FILE")
    if repeats < 1:
        raise Table2Error(f"--repeats must be >= 1, got {repeats}")
    pairs, description, problems = open_heldout_pairs(data)
    column = column or ("voc" if data == "builtin" else "lol")
    rows = []
    bar = progress(None, desc="table2", unit="img", disable=not show_progress,
                   total=len(models) * len(backends) * len(pairs))
    try:
        for name, path in models:
            ckpt = load_checkpoint(path)   # read and checked once, for every backend
            model_sizes = {}
            if sizes:
                try:
                    model_sizes = checkpoint_sizes(ckpt)
                except (UserError, OSError) as err:   # e.g. no room in $TMPDIR
                    problems.append(f"{name}: model size not measured: {err}")
            for backend in backends:
                label = name if len(backends) == 1 else f"{name} ({backend})"
                bar.set_postfix_str(label)
                rows.append(evaluate_model(label, ckpt, backend, pairs, repeats,
                                           tick=lambda: bar.update(1), sizes=model_sizes))
    finally:
        bar.close()
    return Table2Result(description, column, rows, pairs, repeats, problems)


# ---- the table --------------------------------------------------------------------------------
def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _metric_cells(values) -> list[str]:
    psnr, ssim, theta = values
    return [_num(psnr, 2), _num(ssim, 2), _num(theta, 2)]


def size_cell(sizes: dict) -> str:
    """'.pth / safetensors / Orbax / parameters' in MB (10^6 bytes), or '-'."""
    keys = ("pth_bytes", "safetensors_bytes", "orbax_bytes", "parameter_bytes")
    if not sizes or any(sizes.get(k) is None for k in keys):
        return "-"
    return " / ".join(f"{sizes[k] / 1e6:.3f}" for k in keys)


def table_markdown(result: Table2Result) -> str:
    """The report's layout, with the model size column it left out; measured rows fill the
    column group of the data they ran on."""
    head = ("| row | source | params | model size (MB): .pth / safetensors / Orbax / params "
            "| time per image | GFLOP/s | VOC PSNR | VOC SSIM | VOC θ "
            "| LOL PSNR | LOL SSIM | LOL θ |")
    lines = [head, "|" + " --- |" * 12]
    blank = ["·", "·", "·"]
    for r in PUBLISHED_ROWS:
        implied = PUBLISHED_GFLOP / (r["time_ms"] * 1e-3)
        lines.append(f"| {r['row']} | published | {r['params']} | - | {r['time_ms']:.2f} ms | "
                     f"{implied:,.0f} (implied) | " + " | ".join(
                         _metric_cells(r["voc"]) + _metric_cells(r["lol"])) + " |")
    for row in result.rows:
        cells = _metric_cells((row.mean("psnr"), row.mean("ssim"), row.mean("theta")))
        groups = cells + blank if result.column == "voc" else blank + cells
        h, w = row.resolution
        lines.append(f"| {escape_markdown(row.name)} | measured ({row.backend}) | "
                     f"{row.parameters:,} | {size_cell(row.sizes)} | "
                     f"{row.time_ms:,.1f} ms ({h}x{w}) | {row.gflops_per_s:,.1f} | "
                     + " | ".join(groups) + " |")
    notes = [
        "",
        f"Published rows: {PUBLISHED_NOTE}. Their GFLOP/s is implied by {PUBLISHED_GFLOP:.0f} "
        "GFLOP per 400x600 (HxW) image divided by the published time.",
        f"Measured rows: data = {escape_markdown(result.data)} ({len(result.pairs)} images), "
        "metrics in the "
        f"{result.column.upper()} columns; time = median of {result.repeats} synchronised runs "
        "after a warm-up at the dataset's most common resolution (H x W), on "
        f"{result.machine.get('cpu') or 'an unknown CPU'} ({result.machine.get('cpus')} cores); "
        "metrics: uint8 truncation, PSNR (range 255), scikit-image default SSIM, "
        "theta in degrees, means over images.",
        "Model size (the column the report left out): bytes on disk of each model written "
        "by `dln convert` as a .pth (torch names), a .safetensors file and an Orbax "
        "checkpoint folder (its files summed; Orbax splits its data into files as its "
        "asynchronous writes land, so its size varies by ~0.1% from one write to the "
        "next), and 4 bytes per float32 parameter; exact bytes in table2.json.",
    ]
    return "\n".join(lines + notes) + "\n"


def per_image_markdown(result: Table2Result) -> str:
    lines = ["| model | image | PSNR | SSIM | θ |", "| --- | --- | --- | --- | --- |"]
    for row in result.rows:
        for m in row.per_image:
            lines.append(f"| {escape_markdown(row.name)} | {escape_markdown(m['image'])} | "
                         f"{m['psnr']:.2f} | {m['ssim']:.4f} | "
                         f"{m['theta']:.3f} |")
    return "\n".join(lines) + "\n"


# ---- files -------------------------------------------------------------------------------------
def plot_grid(result: Table2Result, dst: Path) -> None:
    """One row per image (the first few): low | each model's output | ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [p.name for p in result.pairs[:GRID_IMAGES]]
    by_name = {p.name: p for p in result.pairs}
    columns = ["low (input)"] + [r.name for r in result.rows] + ["ground truth"]
    fig, axes = plt.subplots(len(names), len(columns), squeeze=False,
                             figsize=(2.6 * len(columns), 2.0 * len(names) + 0.4))
    try:
        for i, name in enumerate(names):
            images = ([by_name[name].low] + [r.outputs[name] for r in result.rows]
                      + [by_name[name].high])
            for j, (title, image) in enumerate(zip(columns, images)):
                ax = axes[i][j]
                ax.imshow(image)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(title, fontsize=8)
                if j == 0:
                    ax.set_ylabel(name, fontsize=8)
                if 0 < j < len(columns) - 1:
                    m = result.rows[j - 1].per_image[i]
                    ax.set_xlabel(f"{m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}", fontsize=7)
        fig.tight_layout()
        save_figure_atomic(fig, dst, dpi=100)
    finally:
        plt.close(fig)


def write_report(result: Table2Result, folder) -> list[Path]:
    """table2.md, table2.json and table2_grid.png in `folder` (created), in that order."""
    text = ("# Table 2, measured\n\n" + table_markdown(result)
            + "\n## Per image\n\n" + per_image_markdown(result))
    if result.problems:
        text += "\n## Problems\n\n" + "".join(f"- {escape_markdown(p)}\n"
                                                for p in result.problems)
    return write_report_files(folder, {"table2.md": text,
                                       "table2.json": json_text(result.as_dict()),
                                       "table2_grid.png": lambda dst: plot_grid(result, dst)})
