"""Reports stay one line per row (names with control characters are escaped) and the
plot marks the first divergence."""

import numpy as np
from PIL import Image

from core.config import DLNConfig
from parity.engine.block_compare import BlockRow, LayerReport, escape_text, format_table
from parity.engine.harness import image_inputs, run_parity
from parity.engine.report import plot_rows, report_markdown
from weights.convert import checkpoint_from_torch_state
from weights.synthetic import random_torch_state


def test_a_file_name_with_a_newline_stays_on_one_report_line(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (9, 11, 3), dtype=np.uint8)).save(folder / "a\nb.png")
    cfg = DLNConfig(dim=16)
    ckpt = checkpoint_from_torch_state(random_torch_state(cfg, 1), cfg)
    run = run_parity(ckpt, image_inputs([str(folder)]))
    markdown = report_markdown(run)
    inputs_line = next(line for line in markdown.splitlines() if line.startswith("- inputs:"))
    assert "a\\nb.png" in inputs_line
    assert not any(line.startswith("b.png") for line in markdown.splitlines())


def test_text_table_escapes_names_and_plot_marks_the_first_divergence(tmp_path):
    rows = [BlockRow("ok", (1, 2), (1, 2), 0.0, 1.0, 0.0, "pass", "ok", "ok"),
            BlockRow("bad\nname", (1, 2), (1, 2), 1.0, 1.0, 1.0, "fail", "bad", "bad\nname"),
            BlockRow("relu", (1, 2), None, None, None, None, "only in torch", None, "relu")]
    report = LayerReport(rows, 1e-5)
    lines = format_table(report)
    assert len(lines) == 4 and any("bad\\nname" in line for line in lines)
    assert escape_text("tab\there") == "tab\\there"
    plot_rows(report, tmp_path / "plot.png", "rows")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert report.first_divergence_module == "bad\nname" and report.passed is False
