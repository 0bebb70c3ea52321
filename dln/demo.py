"""The main job: convert the sample checkpoint, enhance the samples, show the result."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.evaluation import psnr_uint8
from core.images import list_images, load_image, quantize
from core.text import escape_text


SUMMARY_FILE = "summary.json"


class DemoError(UserError, ValueError):
    """A --samples folder or an --out the demo cannot use; one line for the user."""


@dataclasses.dataclass
class DemoSummary:
    safetensors: Path
    enhanced: list[Path]
    grid: Path
    psnr_low: float
    psnr_enhanced: float
    failures: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures

    def text(self) -> str:
        lines = [f"converted -> {self.safetensors}",
                 f"enhanced {len(self.enhanced)} image(s) -> {self.enhanced[0].parent if self.enhanced else '-'}",
                 f"grid (low | enhanced | reference) -> {self.grid}",
                 f"mean PSNR vs reference: low-light {self.psnr_low:.2f} dB, "
                 f"enhanced {self.psnr_enhanced:.2f} dB ({self.psnr_enhanced - self.psnr_low:+.2f} dB)"]
        lines += [f"problem: {f}" for f in self.failures]
        return "\n".join(escape_text(line) for line in lines)  # one line each, any name


def save_grid(rows: list[list[np.ndarray]], dst: Path, height: int = 192) -> None:
    """Rows of uint8 RGB images, each scaled to `height`, tiled with a white gutter."""
    from PIL import Image

    from core.images import write_png_atomic

    tiles = []
    for row in rows:
        scaled = [np.asarray(Image.fromarray(im).resize(
            (max(1, round(im.shape[1] * height / im.shape[0])), height), Image.Resampling.BILINEAR))
            for im in row]
        gutter = np.full((height, 4, 3), 255, np.uint8)
        parts = []
        for tile in scaled:
            parts += [tile, gutter]
        tiles.append(np.concatenate(parts[:-1], axis=1))
    width = max(t.shape[1] for t in tiles)
    padded = [np.pad(t, ((0, 4), (0, width - t.shape[1]), (0, 0)), constant_values=255)
              for t in tiles]
    write_png_atomic(np.concatenate(padded, axis=0)[:-4], dst)


def check_samples(samples: str) -> tuple[Path, Path]:
    """(low/, high/) of a LOL-layout folder with at least one low image that has its
    reference in high/; anything else is a DemoError (before anything is written)."""
    low_dir, high_dir = Path(samples) / "low", Path(samples) / "high"
    if not (low_dir.is_dir() and high_dir.is_dir()):
        raise DemoError(f"--samples {samples}: needs low/ and high/ subfolders "
                        "(LOL layout: the same file names in both)")
    low_images, _ = list_images([low_dir])
    if not low_images:
        raise DemoError(f"--samples {samples}: no images in low/ (png, jpg, jpeg, bmp)")
    missing = [p.name for p in low_images if not (high_dir / p.name).is_file()]
    if missing:
        raise DemoError(f"--samples {samples}: no reference in high/ for "
                        + ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else ""))
    return low_dir, high_dir


def plan_demo_outputs(weights: str, low_dir: Path, high_dir: Path, out_dir: Path) -> Path:
    """Refuse (DemoError, before anything is written) a demo whose outputs would replace
    one of its inputs (the checkpoint, a low-light image or a reference) or each other;
    the safetensors path it will write."""
    from core.run_outputs import OutputClash, OutputPlan

    lows, _ = list_images([low_dir])
    highs, _ = list_images([high_dir])
    plan = OutputPlan([Path(weights), *lows, *highs])
    st_path = out_dir / (Path(weights).stem + ".safetensors")
    try:
        plan.claim_all([st_path, *(out_dir / "enhanced" / f"{p.stem}.png" for p in lows),
                        out_dir / "grid.png", out_dir / SUMMARY_FILE])
    except OutputClash as err:
        raise DemoError(f"--out {out_dir}: {err}") from None
    return st_path


def run_demo(weights: str, samples: str, out: str) -> DemoSummary:
    from core.report_files import json_text, write_report
    from dln.enhance import enhance_paths
    from weights.convert import convert, load_checkpoint

    low_dir, high_dir = check_samples(samples)
    out_dir = Path(out)
    st_path = plan_demo_outputs(weights, low_dir, high_dir, out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DemoError(f"--out {out_dir}: cannot create it ({err.strerror or err})") from None
    convert(weights, st_path)
    ckpt = load_checkpoint(st_path)
    result = enhance_paths(ckpt, [low_dir], out_dir / "enhanced", backend="jax", overwrite=True)
    low_by_stem = {p.stem: p for p in list_images([low_dir])[0]}
    rows, psnr_low, psnr_out = [], [], []
    for path in result.written:  # out/enhanced/<stem>.png, made from low/<stem>.<any suffix>
        low_path = low_by_stem[path.stem]
        low = quantize(load_image(low_path))
        enhanced = quantize(load_image(path))
        high = quantize(load_image(high_dir / low_path.name))
        psnr_low.append(psnr_uint8(low, high))
        psnr_out.append(psnr_uint8(enhanced, high))
        rows.append([low, enhanced, high])
    grid = out_dir / "grid.png"
    if not rows:
        raise DemoError(f"--samples {samples}: no image could be enhanced"
                        + (f" ({result.failures[0]})" if result.failures else ""))
    save_grid(rows, grid)
    summary = DemoSummary(st_path, result.written, grid, float(np.mean(psnr_low)),
                          float(np.mean(psnr_out)), result.failures)
    # the one report writer: atomic, never through a link, a full disk is one line
    write_report(out_dir, {SUMMARY_FILE: json_text(
        {"safetensors": str(st_path), "enhanced": [str(p) for p in result.written],
         "psnr_low_db": summary.psnr_low, "psnr_enhanced_db": summary.psnr_enhanced,
         "failures": result.failures})})
    return summary
