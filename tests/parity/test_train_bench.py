"""`dln bench --workload train`: FLOP per step, figures, floors, the profile's kinds, and one
tiny end-to-end run. No timing is asserted: speed goals live in the command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.config import DLNConfig
from dln.cli import main
from parity.bench.flops import flops_by_kernel, network_flops, training_step_flops
from parity.bench.train_bench import (FLOOR_TRAIN_JAX_OVER_TORCH, evaluate_train_floors,
                                      parse_train_backends, speedups, step_summary,
                                      step_throughput)


def _jaxpr_flops(jaxpr) -> int:
    """2 x multiply-adds of every convolution and matrix product in a jaxpr (sub-jaxprs
    included), counted from the shapes of each equation."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            dn = eqn.params["dimension_numbers"]
            rhs = eqn.invars[1].aval.shape
            window = int(np.prod([rhs[d] for d in dn.rhs_spec[2:]]))
            total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * window * rhs[dn.rhs_spec[1]]
        elif name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            k = int(np.prod([lhs[d] for d in lhs_contract]))
            total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * k
        for sub in eqn.params.values():
            inner = getattr(sub, "jaxpr", None)
            if inner is not None:
                total += _jaxpr_flops(getattr(inner, "jaxpr", inner))
    return total


def test_flops_per_step_are_what_autodiff_of_the_plain_model_computes():
    """3 x forward - feat1's input gradient, against the convolutions and products JAX's
    own gradient of the loss traces (dim 16: the SSIM filter is no convolution)."""
    import jax
    import jax.numpy as jnp

    from core.recipe import AUTHORS_RECIPE
    from port.losses import dln_loss
    from port.model import DLN

    cfg = DLNConfig(dim=16)
    batch, height, width = 2, 14, 18
    model = DLN(cfg)
    x = jnp.zeros((batch, height, width, 3), jnp.float32)

    def loss(params):
        return dln_loss(model.apply({"params": params}, x), x, AUTHORS_RECIPE.tv_weight)

    shapes = jax.eval_shape(model.init, jax.random.key(0), x)["params"]  # nothing compiled
    traced = jax.make_jaxpr(jax.grad(loss))(shapes).jaxpr
    assert _jaxpr_flops(traced) == training_step_flops(cfg, height, width, batch)
    feat1 = batch * 2 * 4 * 32 * 9 * height * width  # 3x3 conv, 4 -> 2 x dim channels
    assert training_step_flops(cfg, height, width, batch) == \
        3 * network_flops(cfg, height, width, batch) - feat1


def test_flops_of_the_floor_step_at_dim_64():
    # 4 x 96^2 crops: the forward is 51.0 GFLOP, a step 3 x 51.0 - feat1's 0.34
    got = training_step_flops(DLNConfig(), 96, 96, 4) / 1e9
    assert got == pytest.approx(152.585, abs=1e-3)


def test_step_summary_is_in_seconds_with_steps_per_second():
    s = step_summary([2.0, 1.0, 3.0, 4.0, 5.0])
    assert s["median_s_per_step"] == 3.0 and s["steps_per_s"] == pytest.approx(1 / 3)
    assert (s["min_s"], s["max_s"], s["steps"]) == (1.0, 5.0, 5)
    assert (s["p25_s"], s["p75_s"]) == (2.0, 4.0)
    fig = step_throughput(s, flop_per_step=int(150e9), peak_gflops=200.0)
    assert fig["gflops_per_s"] == pytest.approx(50.0) and fig["peak_fraction"] == 0.25
    assert fig["best_gflops_per_s"] == pytest.approx(150.0) and not fig["exceeds_peak"]
    # one step faster than the peak allows gives the timer away
    assert step_throughput(step_summary([3.0, 0.5]), int(150e9), 200.0)["exceeds_peak"]


def _row(name, median, fraction=0.3):
    return {"backend": name, "available": True, "median_s_per_step": median,
            "peak_fraction": fraction}


def test_training_floors_are_ratios_of_median_steps_at_batch_4_x_96():
    rows = [_row("jax", 2.0, 0.55), _row("torch", 2.2), _row("torch-compile", 1.9),
            {"backend": "jax-plain", "available": False, "reason": "x"}]
    floors = {f["floor"]: f for f in evaluate_train_floors(rows, 4, 96)}
    over_torch = next(f for k, f in floors.items() if "speedup_over_torch " in k)
    assert over_torch["value"] == pytest.approx(1.1) and not over_torch["passed"]
    assert over_torch["threshold"] == FLOOR_TRAIN_JAX_OVER_TORCH
    over_compile = next(f for k, f in floors.items() if "compile" in k)
    assert not over_compile["passed"]  # 1.9 s beats jax's 2.0 s
    assert next(f for k, f in floors.items() if "fraction" in k)["passed"]
    assert all("note" not in f for f in floors.values())
    assert all("4 x 96" in f["note"] for f in evaluate_train_floors(rows, 32, 128))
    assert speedups(rows) == pytest.approx({"torch": 1.1, "torch-compile": 0.95})
    assert evaluate_train_floors(rows[1:], 4, 96) == []


def test_training_backends_are_checked():
    assert parse_train_backends("torch, jax-plain,torch") == ("torch", "jax-plain")
    assert parse_train_backends(None) == ("jax", "torch", "torch-compile")
    with pytest.raises(ValueError, match="torch-tuned-glibc"):
        parse_train_backends("jax,torch-tuned-glibc")


def test_profile_kinds_read_the_ports_scopes_and_autodiffs_shapes():
    from parity.bench.train_profile import classify

    conv3 = {"op": "convolution", "flop": 1, "window": [3, 3], "lhs_spatial": [96, 96]}
    whole = {"op": "convolution", "flop": 1, "window": [96, 96], "lhs_spatial": [98, 98]}
    dot = {"op": "dot", "flop": 1, "window": None}
    path = "jit(step)/transpose(jvp(DLN))/DLN.residual/feat2"
    assert classify("fusion", "jit(step)/jvp(DLN)/DLN.residual/feat2/conv", conv3) == \
        "3x3 conv, forward"
    assert classify("fusion", path + "/conv", conv3) == "3x3 conv, input gradient"
    assert classify("fusion", path + "/conv", whole) == "3x3 conv, kernel gradient"
    assert classify("dot", path + "/kernel_grad_3x3/dot_general", dot) == \
        "3x3 conv, kernel gradient"
    assert classify("fusion", path + "/input_grad_1x1/dot_general", dot) == \
        "1x1 conv, input gradient"
    assert classify("fusion", "jit(step)/jvp(dln_loss)/while/body/add", None).startswith("loss")
    assert classify("fusion", "jit(step)/adam/add", None) == "Adam update"
    assert classify("fusion", "", None).startswith("data movement")


def test_train_bench_command_rejects_bad_options_in_one_line(capsys, tmp_path):
    assert main(["bench", "--patch", "64"]) == 2  # --patch without --workload train
    with pytest.raises(SystemExit) as exited:  # argparse's own one-line range error
        main(["bench", "--workload", "train", "--patch", "8"])
    assert exited.value.code == 2
    assert main(["bench", "--workload", "train", "--backends", "torch-tuned-glibc"]) == 2
    assert main(["bench", "--workload", "train", "--weights", str(tmp_path / "no.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("dln bench: error:") for line in err), err


def test_profile_times_each_kind_and_counts_its_flop_from_the_compiled_step():
    import jax
    import jax.numpy as jnp

    from parity.bench.train_profile import profile_step
    from port.conv_grads import conv_bias_prelu

    n, h, w, c = 2, 12, 10, 16
    x = jnp.asarray(np.random.default_rng(0).random((n, h, w, c), dtype=np.float32))

    def loss(x, kernel, bias):
        with jax.named_scope("DLN"):
            return jnp.sum(conv_bias_prelu(x, kernel, bias, jnp.float32(0.25)) ** 2)

    step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    args = (x, jnp.ones((3, 3, c, c), jnp.float32) * 0.01, jnp.zeros(c, jnp.float32))
    jax.block_until_ready(step(*args))
    profile = profile_step(step, args, runs=1)
    kinds = {k["kind"]: k for k in profile["by_kind"]}
    conv_flop = 2 * 9 * c * c * n * h * w
    for kind in ("3x3 conv, forward", "3x3 conv, input gradient", "3x3 conv, kernel gradient"):
        assert kinds[kind]["gflop"] * 1e9 == conv_flop, kind
        assert kinds[kind]["ms"] > 0
    assert profile["wall_ms"] > 0 and profile["op_ms_total"] >= kinds[kind]["ms"]


def test_train_bench_end_to_end_json_rows_and_report(tmp_path, capsys, authors_pth_16):
    """One tiny run (dim 16, 1 crop of 16^2, one timed step): the one test that starts
    the workers and compiles a JAX train step (~10-20 s on 2 cores)."""
    code = main(["bench", "--workload", "train", "--weights", str(authors_pth_16),
                 "--batch", "1", "--patch", "16", "--repeats", "1", "--peak-size", "64",
                 "--backends", "jax,torch", "--json", "--report", str(tmp_path / "rep")])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    cfg = DLNConfig(dim=16)
    assert result["workload"] == "train" and (result["batch"], result["patch"]) == (1, 16)
    assert result["flop_per_step"] == training_step_flops(cfg, 16, 16, 1)
    assert [r["backend"] for r in result["rows"]] == ["jax", "torch"]
    for row in result["rows"]:
        for key in ("median_s_per_step", "peak_fraction", "peak_rss_mib", "steps_per_s"):
            assert np.isfinite(row[key]) and row[key] > 0, (row["backend"], key)
        assert row["steps"] == 1
    assert result["machine"]["cpus"] >= 1 and set(result["speedup_of_jax_over"]) == {"torch"}
    for name in ("workload_train.json", "workload_train.md", "workload_train.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0


def test_the_jax_train_worker_splits_its_cpu_as_dln_train_does_and_jax_plain_does_not(
        monkeypatch):
    from parity.bench.train_bench import TrainBenchOptions, train_worker_env
    from port.host_devices import DEVICE_COUNT_FLAG, training_xla_flags

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("DLN_CPU_SPLIT", "auto")
    opts = TrainBenchOptions(weights="w.pth", batch=4, patch=96, env={})
    expected = training_xla_flags(4, "")
    assert train_worker_env("jax", opts).get("XLA_FLAGS") == expected
    assert "XLA_FLAGS" not in train_worker_env("jax-plain", opts)
    # the user's flags are kept and a device count given there wins
    opts = TrainBenchOptions(weights="w.pth", batch=4, patch=96,
                             env={"XLA_FLAGS": f"{DEVICE_COUNT_FLAG}=1"})
    assert train_worker_env("jax", opts)["XLA_FLAGS"] == f"{DEVICE_COUNT_FLAG}=1"
    # DLN_CPU_SPLIT=off turns it off, as for dln train
    opts = TrainBenchOptions(weights="w.pth", batch=4, patch=96, env={"DLN_CPU_SPLIT": "off"})
    assert "XLA_FLAGS" not in train_worker_env("jax", opts)
