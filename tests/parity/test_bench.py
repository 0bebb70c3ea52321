"""`dln bench` logic: FLOP count, peak, flags, floors, and one tiny end-to-end run.

No timing is asserted anywhere: speed goals live in `dln bench`, not in tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from dln.cli import main
from core.config import DLNConfig
from core.images import parse_image_size as parse_size
from parity.bench.benchmark import (FLOOR_JAX_OVER_TORCH, evaluate_floors, latency_summary,
                                    parse_backends, peak_from_runs, throughput_figures)
from parity.bench.flops import flops_by_kernel, network_flops


def _hand_count_per_pixel(dim: int, input_channels: int) -> int:
    """FLOP per pixel written out from the network's structure, block by block."""
    def conv(cin, cout, k):
        return 2 * cin * cout * k * k
    lighten = conv(dim, dim // 2, 3) + conv(dim // 2, dim // 2, 3) + conv(dim // 2, dim, 3)
    total = conv(input_channels, 2 * dim, 3) + conv(2 * dim, dim, 3)
    for i in (1, 2, 3):
        total += conv(i * dim, dim, 1) + 3 * lighten + 2 * conv(dim, dim, 1)
    return total + conv(4 * dim, dim, 3) + conv(dim, 3, 3)


def test_flops_of_a_600x400_image_are_the_facts_332_gflop():
    flop = network_flops(DLNConfig(), 400, 600)
    assert abs(flop / 1e9 - 332) / 332 < 0.005, f"{flop / 1e9:.2f} GFLOP, facts say ~332"


@pytest.mark.parametrize("cfg", [DLNConfig(), DLNConfig(dim=16, brightness=False)])
def test_flops_equal_the_hand_count_per_pixel_plus_the_dense_layers(cfg):
    h, w = 37, 53
    dense = sum(2 * (i * cfg.dim) * (i * cfg.dim // 16) * 2 for i in (1, 2, 3))
    expected = _hand_count_per_pixel(cfg.dim, cfg.input_channels) * h * w + dense
    got = network_flops(cfg, h, w)
    assert got == expected, f"counted {got}, by hand {expected}"
    assert network_flops(cfg, h, w, batch=3) == 3 * expected
    assert sum(flops_by_kernel(cfg, h, w).values()) == expected


def test_latency_summary_is_per_image_with_median_and_quartiles():
    summary = latency_summary([0.4, 0.2, 0.6, 0.8, 1.0], batch=2)
    assert summary["median_ms"] == pytest.approx(300.0)
    assert (summary["min_ms"], summary["max_ms"]) == pytest.approx((100.0, 500.0))
    assert (summary["p25_ms"], summary["p75_ms"]) == pytest.approx((200.0, 400.0))
    assert summary["runs"] == 5


def test_peak_is_the_fastest_library_on_the_same_products():
    n = 1000  # 2e9 FLOP per product
    runs = {"numpy": [0.02, 0.04, 0.04], "torch": [0.01, 0.05, 0.08], "jax": [0.05, 0.1, 0.1]}
    peak = peak_from_runs(runs, n)
    assert peak["library"] == "torch"
    assert peak["gflops_per_s"] == pytest.approx(200.0)
    assert peak["by_library"]["numpy"] == pytest.approx(100.0)
    # best library per round: 200, 50, 50 GFLOP/s -> the load on the machine shows
    assert peak["median_round_gflops_per_s"] == pytest.approx(50.0)


def test_a_figure_above_the_measured_peak_is_flagged_as_a_measurement_error():
    flop = 332_000_000_000
    honest = throughput_figures({"median_ms": 2000.0, "min_ms": 1800.0}, flop, 300.0)
    assert not honest["exceeds_peak"] and honest["flag"] is None
    assert honest["gflops_per_s"] == pytest.approx(166.0)
    assert honest["peak_fraction"] == pytest.approx(166.0 / 300.0)
    assert honest["best_peak_fraction"] == pytest.approx(332.0 / 1.8 / 300.0)
    # the report's 2.75 ms: ~120 TFLOP/s, impossible on a ~300 GFLOP/s machine
    reported = throughput_figures({"median_ms": 2.75, "min_ms": 2.75}, flop, 300.0)
    assert reported["exceeds_peak"] and "MEASUREMENT ERROR" in reported["flag"]
    # even one impossible run out of many gives the timer away
    one_bad = throughput_figures({"median_ms": 2000.0, "min_ms": 1.0}, flop, 300.0)
    assert one_bad["exceeds_peak"]


def _fig(median_ms, peak_fraction, rss=900.0):
    return {"available": True, "median_ms": median_ms, "peak_fraction": peak_fraction,
            "peak_rss_mib": rss}


def test_floors_report_each_threshold_and_whether_it_held():
    backends = {"jax": _fig(1000.0, 0.55), "torch": _fig(1400.0, 0.3, rss=3500.0),
                "torch-compile": _fig(900.0, 0.6)}
    floors = {f["floor"]: f for f in evaluate_floors(backends, (400, 600), 1)}
    over_torch = next(f for k, f in floors.items() if "speedup_over_torch " in k)
    assert over_torch["value"] == pytest.approx(1.4) and not over_torch["passed"]
    assert over_torch["threshold"] == FLOOR_JAX_OVER_TORCH
    over_compile = next(f for k, f in floors.items() if "torch_compile" in k)
    assert not over_compile["passed"]  # 900 ms beats jax's 1000 ms
    fraction = next(f for k, f in floors.items() if "fraction" in k)
    assert fraction["passed"]
    rss = {k: f["passed"] for k, f in floors.items() if "RSS" in k}
    assert rss == {"jax peak RSS of one inference (MiB)": True,
                   "torch peak RSS of one inference (MiB)": False,
                   "torch-compile peak RSS of one inference (MiB)": True}
    assert all("note" not in f for f in floors.values())
    elsewhere = evaluate_floors(backends, (32, 48), 1)
    assert all("400x600" in f["note"] for f in elsewhere)


def test_the_nnx_floor_holds_within_5_percent_of_the_linen_port_and_fails_beyond():
    from parity.bench.benchmark import FLOOR_NNX_OVER_JAX
    from parity.bench.report import floor_lines

    def nnx_floor(nnx_ms):
        backends = {"jax": _fig(1000.0, 0.6), "nnx": _fig(nnx_ms, 0.6)}
        floors = evaluate_floors(backends, (400, 600), 1)
        return next(f for f in floors if f["floor"].startswith("nnx over jax")), floors

    assert FLOOR_NNX_OVER_JAX == 1.05
    within, floors = nnx_floor(1040.0)
    assert within["value"] == pytest.approx(1.04) and within["passed"]
    assert any("PASS: nnx over jax" in line and "(at most 1.05)" in line
               for line in floor_lines({"floors": floors}))
    assert not nnx_floor(1060.0)[0]["passed"]
    assert nnx_floor(900.0)[0]["passed"]   # faster than Linen passes
    absent = evaluate_floors({"jax": _fig(1000.0, 0.6)}, (400, 600), 1)
    assert not any(f["floor"].startswith("nnx") for f in absent)


def test_unavailable_backends_are_left_out_of_the_floors():
    backends = {"jax": _fig(1000.0, 0.6), "torch-compile": {"available": False, "reason": "x"}}
    names = [f["floor"] for f in evaluate_floors(backends, (400, 600), 1)]
    assert not any("compile" in n for n in names)
    assert evaluate_floors({"jax": {"available": False, "reason": "x"}}, (400, 600), 1) == []


def test_size_and_backend_arguments_are_checked():
    assert parse_size("400x600") == (400, 600)
    assert parse_backends("torch, jax,torch") == ("torch", "jax")
    for bad in ("400", "0x5", "ax3"):
        with pytest.raises(ValueError):
            parse_size(bad)
    with pytest.raises(ValueError, match="tensorflow"):
        parse_backends("jax,tensorflow")


def test_bench_command_rejects_bad_options_in_one_line(capsys, tmp_path):
    assert main(["bench", "--size", "12"]) == 2
    assert main(["bench", "--backends", "mxnet"]) == 2
    assert main(["bench", "--weights", str(tmp_path / "missing.pth")]) == 2
    assert main(["bench", "--env", "NOEQUALS"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("dln bench: error:") for line in err), err


def test_bench_end_to_end_json_has_the_figures_per_backend(tmp_path, capsys, authors_pth_16):
    code = main(["bench", "--weights", str(authors_pth_16), "--size", "16x24", "--repeats", "2",
                 "--peak-size", "64", "--backends", "jax,nnx,torch", "--json",
                 "--report", str(tmp_path / "rep")])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["backends"]) == {"jax", "nnx", "torch"}
    assert "NNX" in result["backends"]["nnx"]["settings"]["model"]
    assert any(f["floor"].startswith("nnx over jax") for f in result["floors"])
    assert set(result["peak"]["by_library"]) == {"numpy", "torch", "jax"}
    for name, fig in result["backends"].items():
        for key in ("median_ms", "gflops_per_s", "peak_fraction", "peak_rss_mib"):
            assert np.isfinite(fig[key]) and fig[key] > 0, (name, key, fig.get(key))
        assert fig["runs"] == 2
        assert fig["peak_fraction"] == pytest.approx(
            fig["gflops_per_s"] / result["peak"]["gflops_per_s"])
    assert result["flop_per_image"] == network_flops(DLNConfig(dim=16), 16, 24)
    for name in ("bench.json", "bench.md", "bench_latency.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
