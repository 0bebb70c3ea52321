"""`dln bench --workload train`: seconds per training step of every backend, against the peak.

One run measures, on the same weights and the same batch (parity.bench.train_runners):
1. the float32 matmul peak of this machine, as `dln bench` measures it
   (parity.bench.benchmark: the best of numpy, torch and JAX on large products);
2. seconds per full training step (the trainer's step: batch handed over from numpy,
   the authors' loss, gradients, Adam) of each backend, one fresh worker process per
   backend, warm-up steps (compilation) excluded, timed steps interleaved round by
   round with the peak's products so that outside load falls on all alike; median and
   spread;
3. FLOP per step from the tensor table (parity.bench.flops.training_step_flops:
   forward + backward), GFLOP/s and the fraction of the peak; a figure above the peak
   is flagged as a measurement error;
4. each worker's peak resident set after its last step;
5. with `profile`: JAX's op time per kind of work in the step (parity.bench.train_profile).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from core.errors import InputError
from core.recipe import AUTHORS_RECIPE
from parity.bench.benchmark import (DEFAULT_PEAK_N, PEAK_LIBRARIES, SETUP_TIMEOUT_S, BenchError,
                                    WorkerProcess, machine_description, timed_rounds,
                                    peak_from_runs, throughput_figures, worker_env)
from parity.bench.flops import training_step_flops
from parity.bench.train_runners import DEFAULT_TRAIN_BACKENDS, TRAIN_BACKENDS

# The floors (the training speed goals), defined at batch 4 x 96^2 crops, one run.
FLOOR_BATCH, FLOOR_PATCH = 4, 96
FLOOR_TRAIN_JAX_OVER_TORCH = 1.2     # JAX's step at least 1.2x faster than PyTorch eager
FLOOR_TRAIN_JAX_OVER_COMPILE = 1.0   # and not slower than torch.compile
FLOOR_TRAIN_JAX_PEAK_FRACTION = 0.5  # at half the measured matmul peak (forward + backward)
STEP_TIMEOUT_S = 1800                # one round of a large batch on 2 cores


@dataclasses.dataclass
class TrainBenchOptions:
    weights: str
    batch: int = AUTHORS_RECIPE.batch
    patch: int = AUTHORS_RECIPE.patch
    backends: tuple[str, ...] = DEFAULT_TRAIN_BACKENDS
    repeats: int = 5
    peak_n: int = DEFAULT_PEAK_N
    env: dict = dataclasses.field(default_factory=dict)
    profile: bool = False
    show_progress: bool = True


def parse_train_backends(text: str | None) -> tuple[str, ...]:
    if text is None:
        return DEFAULT_TRAIN_BACKENDS
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in TRAIN_BACKENDS]
    if unknown or not names:
        raise InputError(f"unknown backend(s) {', '.join(unknown) or '(none given)'} for "
                         f"--workload train; choose from {', '.join(TRAIN_BACKENDS)}")
    return names


# ---- pure figures (tested without timing anything) ------------------------------------------
def step_summary(seconds: list[float]) -> dict:
    """Seconds per step: median, quartiles, extremes, relative spread, steps per second."""
    s = np.asarray(seconds, np.float64)
    median = float(np.median(s))
    p25, p75 = (float(v) for v in np.percentile(s, [25, 75]))
    return {"median_s_per_step": median, "p25_s": p25, "p75_s": p75,
            "min_s": float(s.min()), "max_s": float(s.max()),
            "iqr_over_median": (p75 - p25) / median if median > 0 else float("nan"),
            "steps_per_s": 1.0 / median if median > 0 else float("nan"), "steps": int(s.size)}


def step_throughput(summary: dict, flop_per_step: int, peak_gflops: float) -> dict:
    """GFLOP/s and fraction of the peak at the median step (and the best), flagged when
    impossible (the same rule as the inference benchmark's)."""
    return throughput_figures({"median_ms": summary["median_s_per_step"] * 1e3,
                               "min_ms": summary["min_s"] * 1e3}, flop_per_step, peak_gflops)


def evaluate_train_floors(rows: list[dict], batch: int, patch: int) -> list[dict]:
    """The training speed floors, each with its measured value and whether it held."""
    by_name = {r["backend"]: r for r in rows if r.get("available")}
    jax = by_name.get("jax")
    if jax is None:
        return []
    floors = []
    for other, key, threshold in (("torch", "speedup_over_torch", FLOOR_TRAIN_JAX_OVER_TORCH),
                                  ("torch-compile", "speedup_over_torch_compile",
                                   FLOOR_TRAIN_JAX_OVER_COMPILE)):
        if other in by_name:
            ratio = by_name[other]["median_s_per_step"] / jax["median_s_per_step"]
            floors.append({"floor": f"jax training step {key} (median ratio)", "value": ratio,
                           "threshold": threshold, "passed": bool(ratio >= threshold)})
    floors.append({"floor": "jax training step fraction of measured float32 matmul peak",
                   "value": jax["peak_fraction"], "threshold": FLOOR_TRAIN_JAX_PEAK_FRACTION,
                   "passed": bool(jax["peak_fraction"] >= FLOOR_TRAIN_JAX_PEAK_FRACTION)})
    if (batch, patch) != (FLOOR_BATCH, FLOOR_PATCH):
        for f in floors:
            f["note"] = f"the floors are defined at batch {FLOOR_BATCH} x {FLOOR_PATCH}^2"
    return floors


def speedups(rows: list[dict]) -> dict[str, float]:
    """Median-step ratio other / jax for every other available backend."""
    by_name = {r["backend"]: r for r in rows if r.get("available")}
    if "jax" not in by_name:
        return {}
    return {name: r["median_s_per_step"] / by_name["jax"]["median_s_per_step"]
            for name, r in by_name.items() if name != "jax"}


# ---- the run ---------------------------------------------------------------------------------
def train_worker_env(name: str, opts: "TrainBenchOptions") -> dict:
    """A backend's worker environment; the jax row's process splits its CPU as `dln
    train` does (port.host_devices: one XLA device per core when the batch splits evenly;
    XLA_FLAGS given with --env or in this environment are kept, and a host device count
    named there wins; DLN_CPU_SPLIT=off, there or with --env, turns it off as for `dln
    train`). jax-plain stays one device: the step before any rewrite."""
    from port.host_devices import split_wanted, training_xla_flags

    env = {**worker_env(name), **opts.env}
    if name == "jax" and split_wanted({**os.environ, **env}):
        flags = training_xla_flags(opts.batch, env.get("XLA_FLAGS",
                                                       os.environ.get("XLA_FLAGS", "")))
        if flags is not None:
            env["XLA_FLAGS"] = flags
    return env


def _setup(opts: TrainBenchOptions, workers: dict, rows: dict) -> None:
    from core.progress import progress

    for name in progress(opts.backends, desc="set up backends", unit="backend",
                         disable=not opts.show_progress):
        workers[name] = WorkerProcess(name, env=train_worker_env(name, opts))
        answer = workers[name].request({"op": "setup", "workload": "train", "backend": name,
                                        "weights": str(opts.weights), "batch": opts.batch,
                                        "patch": opts.patch}, timeout=SETUP_TIMEOUT_S)
        if not answer["ok"]:
            rows[name] = {"backend": name, "available": False, "reason": answer["unavailable"]}
            workers.pop(name).close()
            continue
        rows[name] = {"backend": name, "available": True, "settings": answer["settings"],
                      "warmup_s": answer["warmup_s"]}


def run_train_bench(opts: TrainBenchOptions) -> dict:
    """Set every backend up (compiling, warm-up steps), then `repeats` rounds of: one matmul
    per library for the peak, one training step per backend."""
    from weights.convert import load_checkpoint

    if opts.patch < 11:
        raise InputError(f"--patch must be at least 11 (the SSIM window), got {opts.patch}")
    config = load_checkpoint(opts.weights).config
    flop = training_step_flops(config, opts.patch, opts.patch, opts.batch)
    workers: dict[str, WorkerProcess] = {}
    rows: dict[str, dict] = {}
    peak_runs: dict[str, list[float]] = {lib: [] for lib in PEAK_LIBRARIES}
    profile = None
    peak_worker = WorkerProcess("matmul-peak", env={**worker_env("torch"), **opts.env})
    try:
        _setup(opts, workers, rows)
        seconds, rss = timed_rounds(workers, peak_worker, opts.peak_n, peak_runs, opts.repeats,
                                    opts.show_progress, timeout=STEP_TIMEOUT_S)
        if opts.profile and "jax" in workers:
            profile = workers["jax"].request({"op": "profile"}, timeout=STEP_TIMEOUT_S)["profile"]
    finally:
        for worker in [peak_worker, *workers.values()]:
            worker.close()
    peak = peak_from_runs(peak_runs, opts.peak_n)
    for name, secs in seconds.items():
        summary = step_summary(secs)
        rows[name].update(summary)
        rows[name].update(step_throughput(summary, flop, peak["gflops_per_s"]))
        rows[name]["peak_rss_mib"] = rss[name]
    ordered = [rows[name] for name in opts.backends if name in rows]
    result = {
        "workload": "train", "batch": opts.batch, "patch": opts.patch,
        "weights": str(opts.weights), "config": json.loads(config.to_json()),
        "flop_per_step": flop, "gflop_per_step": flop / 1e9, "peak": peak, "rows": ordered,
        "speedup_of_jax_over": speedups(ordered),
        "floors": evaluate_train_floors(ordered, opts.batch, opts.patch),
        "worker_environment": {name: {**worker_env(name), **opts.env} for name in opts.backends},
        "machine": machine_description(),
    }
    if profile is not None:
        result["profile"] = profile
    return result


def train_bench_failed(result: dict) -> bool:
    """--strict: a floor missed or a figure above the peak."""
    return (any(not f["passed"] for f in result["floors"])
            or any(r.get("exceeds_peak") for r in result["rows"]))


__all__ = ["BenchError", "TrainBenchOptions", "run_train_bench", "parse_train_backends",
           "step_summary", "step_throughput", "evaluate_train_floors", "speedups",
           "train_bench_failed"]
