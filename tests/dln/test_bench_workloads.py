"""`dln bench --workload`: seeded workloads of the sizes promised, floors computed from
the rows, one `dln enhance` process per row with its peak memory."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dln.cli import main
from parity.bench.workloads import (FLOOR_FOLDER_COLD, FOLDER_IMAGES, run_enhance,
                                    workload_floors, write_workload)


def test_folder_workload_is_seeded_mixed_sizes_between_240x320_and_1024x768(tmp_path):
    paths = write_workload("folder", tmp_path / "a", seed=0)
    again = write_workload("folder", tmp_path / "b", seed=0, limit=2)
    assert len(paths) == FOLDER_IMAGES >= 12
    for p, q in zip(paths, again):
        np.testing.assert_array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(q)))
    sizes = []
    for p in paths:
        a = np.asarray(Image.open(p))
        assert a.mean() < 80  # low-light
        sizes.append(a.shape[:2])
    assert len(set(sizes)) >= 6
    assert min(h * w for h, w in sizes) == 240 * 320
    assert max(h * w for h, w in sizes) == 1024 * 768


def test_floors_are_ratios_of_the_rows_and_fail_when_jax_is_slow():
    rows = [{"backend": "jax", "cache": "cold", "total_s": 10.0, "exit_code": 0},
            {"backend": "jax", "cache": "warm", "total_s": 9.0, "exit_code": 0},
            {"backend": "torch", "total_s": 12.0, "exit_code": 0}]
    floors = {f["floor"]: f for f in workload_floors("folder", rows)}
    cold = floors["folder jax cold / torch eager"]
    assert cold["value"] == 12.0 / 10.0 and cold["threshold"] == FLOOR_FOLDER_COLD
    assert not cold["passed"] and not floors["folder jax warm / torch eager"]["passed"]


def test_one_row_is_a_dln_enhance_process_with_time_and_peak_rss(tmp_path, authors_pth_16):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((12, 17, 3), 30, np.uint8)).save(folder / "a.png")
    row = run_enhance(str(authors_pth_16), "torch", folder, tmp_path / "out",
                      {"OMP_WAIT_POLICY": "PASSIVE"}, [])
    assert row["exit_code"] == 0 and (tmp_path / "out" / "a.png").exists()
    assert row["total_s"] > 0 and 50 < row["peak_rss_mib"] < 3 * 1024


def test_unknown_workload_backend_is_one_line_exit_2(capsys):
    code = main(["bench", "--workload", "folder", "--backend", "tpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "tpu" in err[0]
