"""The per-layer plot marks what it says, read back from the PNG itself: the first
divergence is ringed in black (left and right of the point, where nothing else is drawn)
and a dotted black line runs through its column; a plot with no failure has neither."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import parity.engine.report
from parity.engine.block_compare import BlockRow, LayerReport
from parity.engine.report import plot_rows

RING_RADIUS_POINTS = np.sqrt(160) / 2   # scatter s=160 (points^2) is the marker's area box
DARK = 80                               # every channel below this: black-ish ink


def _rows(failing_index: int | None, n: int = 9) -> LayerReport:
    rows = []
    for i in range(n):
        rel = 1.0 if i == failing_index else 1e-7
        status = "fail" if i == failing_index else "pass"
        rows.append(BlockRow(f"block{i}", (1, 4), (1, 4), rel, 1.0, rel, status,
                             f"block{i}", f"block{i}"))
    return LayerReport(rows, 1e-5)


def _draw(tmp_path, monkeypatch, report, x: int, y: float):
    """The PNG as an array and the pixel (column, row) of data point (x, y)."""
    seen = {}
    real_save = parity.engine.report.save_figure_atomic

    def save(fig, dst, dpi=110):
        ax = fig.axes[0]
        fig.canvas.draw()
        px, py = ax.transData.transform((x, y))
        seen["scale"] = dpi / fig.dpi
        seen["point"] = (px * seen["scale"], py * seen["scale"])
        extent = ax.get_window_extent()
        seen["axes_rows"] = (extent.y0 * seen["scale"], extent.y1 * seen["scale"])
        return real_save(fig, dst, dpi=dpi)

    monkeypatch.setattr(parity.engine.report, "save_figure_atomic", save)
    plot_rows(report, tmp_path / "plot.png", "rows")
    image = np.asarray(Image.open(tmp_path / "plot.png").convert("RGB")).astype(int)
    px, py = seen["point"]
    return image, (px, image.shape[0] - py), seen


def _dark(image, col: float, row: float, reach: int = 2) -> bool:
    c, r = int(round(col)), int(round(row))
    patch = image[max(r - reach, 0):r + reach + 1, max(c - reach, 0):c + reach + 1]
    return bool((patch.max(axis=2) < DARK).any())


def _strip(image, col: float, row: float, radius: float, seen) -> np.ndarray:
    """The 3-pixel-wide column of the plot at `col`, top to bottom of the axes, without
    the rows of the point's own marker."""
    y0, y1 = seen["axes_rows"]
    top, bottom = int(image.shape[0] - y1) + 3, int(image.shape[0] - y0) - 3
    rows = [r for r in range(top, bottom) if abs(r - row) > 1.5 * radius]
    c = int(round(col))
    return image[rows, c - 1:c + 2]


def _inked_rows(column) -> float:
    """The fraction of pixel rows of a 3-pixel-wide strip with grey-to-black ink (a thin
    dotted line is antialiased grey)."""
    return float((column.max(axis=2) < 170).any(axis=1).mean())


@pytest.mark.parametrize("failing", [2, 6])
def test_the_first_divergence_is_ringed_and_lined_in_the_png(tmp_path, monkeypatch, failing):
    image, (col, row), seen = _draw(tmp_path, monkeypatch, _rows(failing), failing, 1.0)
    radius = RING_RADIUS_POINTS * 110 / 72
    assert _dark(image, col - radius, row) and _dark(image, col + radius, row), \
        "no black ring around the first divergence"
    assert _inked_rows(_strip(image, col, row, radius, seen)) > 0.3, \
        "no dotted line through its column"


def test_a_plot_without_failure_has_no_ring_and_no_line(tmp_path, monkeypatch):
    image, (col, row), seen = _draw(tmp_path, monkeypatch, _rows(None), 4, 1e-7)
    radius = RING_RADIUS_POINTS * 110 / 72
    assert not _dark(image, col - radius, row) and not _dark(image, col + radius, row)
    assert _inked_rows(_strip(image, col, row, radius, seen)) < 0.05
