"""`dln bench --workload`: seeded workloads of the sizes promised, floors computed from
the rows, one `dln enhance` process per row with its peak memory."""

from __future__ import annotations

import numpy as np
import pytest
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


def test_the_profile_account_partitions_the_main_thread_and_lists_the_rest():
    from parity.bench.run_profile import account

    def span(name, start, end, thread="MainThread", **info):
        return {"name": name, "start": start, "end": end, "thread": thread, **info}

    profile = {"spans": [
        span("load_checkpoint", 101.0, 102.0),
        span("predictor", 102.0, 103.5), span("load_weights", 103.0, 103.5),  # nested
        span("trace", 103.5, 104.0), span("compile", 104.0, 105.0),
        span("dispatch", 105.0, 105.1),
        span("compute", 105.1, 109.0, program="1x32x40", asynchronous=True),
        span("wait_previous", 105.2, 109.0),
        span("decode", 103.0, 103.2, thread="reader"),
        span("encode_write", 109.0, 109.6, thread="writer"),
        span("drain", 109.0, 109.7)]}
    acc = account(profile, started=100.0, ended=110.0)
    rows = {r["what"].split(" (")[0]: r["seconds"] for r in acc["rows"]}
    assert abs(sum(rows.values()) - 10.0) < 1e-9          # every second of the run
    assert rows["start-up"] == 1.0 and rows["after the last span"] == pytest.approx(0.3)
    assert rows["building the predictor"] == pytest.approx(1.0)   # without its nested span
    assert rows["weights to the device"] == pytest.approx(0.5)
    assert rows["waiting for compute"] == pytest.approx(3.8)
    assert rows["untracked"] == pytest.approx(0.1)        # 105.1 - 105.2
    assert acc["compute_per_program"] == {"1x32x40": {"runs": 1, "seconds": pytest.approx(3.9)}}
    assert acc["overlapped"] == {"decode": pytest.approx(0.2),
                                 "encode_write": pytest.approx(0.6)}


def test_dln_enhance_profile_records_every_phase_of_the_run(tmp_path, authors_pth_16):
    import json

    folder = tmp_path / "in"
    folder.mkdir()
    for i, (h, w) in enumerate([(20, 30), (30, 20), (21, 31)]):
        Image.fromarray(np.full((h, w, 3), 30 + i, np.uint8)).save(folder / f"{i}.png")
    code = main(["enhance", "--weights", str(authors_pth_16), "--out", str(tmp_path / "o"),
                 "--profile", str(tmp_path / "p.json"), str(folder)])
    assert code == 0
    spans = json.loads((tmp_path / "p.json").read_text())["spans"]
    names = {s["name"] for s in spans}
    assert {"load_checkpoint", "plan", "decode", "trace", "compile", "dispatch", "compute",
            "transfer", "quantize", "encode_write"} <= names, names
    assert {s["thread"] for s in spans if s["name"] == "decode"} == {"reader"}
    assert {s["thread"] for s in spans if s["name"] == "encode_write"} == {"writer"}
    assert sum(s["name"] == "encode_write" for s in spans) == 3
