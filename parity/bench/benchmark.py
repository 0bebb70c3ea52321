"""`dln bench`: per-image latency of every backend, against this machine's own peak.

One run measures, on the same weights and the same input:
1. the float32 matmul peak of this machine: the best throughput of numpy, torch
   and JAX on large square float32 products using all cores (the highest of the
   three, measured before and after the latency runs);
2. per-image latency of each backend (one fresh worker process per backend,
   parity.bench.worker), with the timed runs interleaved round by round so that
   load from other programs falls on every backend alike; median and spread;
3. GFLOP/s from the analytic FLOP count (parity.bench.flops) and the fraction of the
   peak. A figure above the peak is impossible and is flagged as a measurement
   error (e.g. a timer that did not wait for the result);
4. peak resident memory of each worker after one inference (getrusage).
"""

from __future__ import annotations

from core.errors import InputError, UserError
import dataclasses
import json
import os
import queue
import subprocess
import sys
import threading

import numpy as np

from parity.bench.worker import REPLY_PREFIX
from parity.bench.flops import network_flops
from parity.bench.backends import BACKENDS
from core.workers import start_worker

PEAK_LIBRARIES = ("numpy", "torch", "jax")
DEFAULT_SIZE = (400, 600)          # height x width: a LOL image (600 wide, 400 tall)
DEFAULT_PEAK_N = 4096              # 137 GFLOP per product: ~0.5 s here, far from cache effects
SETUP_TIMEOUT_S = 900              # torch.compile on 2 cores can take minutes
# The benchmark's floors (the port's speed goals), measured at 400 x 600, batch 1, in one run.
FLOOR_JAX_OVER_TORCH = 1.5         # JAX at least 1.5x faster than PyTorch eager
FLOOR_JAX_OVER_COMPILE = 1.0       # and not slower than torch.compile
FLOOR_JAX_PEAK_FRACTION = 0.5      # JAX reaches half the measured matmul peak
FLOOR_PEAK_RSS_MIB = 3 * 1024      # one 400 x 600 inference under 3 GiB
# The NNX port runs the same jitted pure function of (params, x) as the Linen port (its
# graph merged inside the trace, no nnx.jit per call): at most 5% slower, same run.
FLOOR_NNX_OVER_JAX = 1.05          # NNX median latency / Linen median latency, at most


class BenchError(UserError, RuntimeError):
    """A worker that died or answered nonsense; one line for the user."""


@dataclasses.dataclass
class BenchOptions:
    weights: str
    size: tuple[int, int] = DEFAULT_SIZE
    batch: int = 1
    backends: tuple[str, ...] = BACKENDS
    repeats: int = 7
    peak_n: int = DEFAULT_PEAK_N
    torch_channels_last: bool = True   # measured faster than NCHW for eager torch here
    jax_fast: bool = True
    env: dict = dataclasses.field(default_factory=dict)  # extra environment for every worker
    profile: bool = False  # trace the JAX forward after the timed rounds
    show_progress: bool = True


def parse_backends(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise InputError(f"unknown backend(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(BACKENDS)}")
    return names


# ---- pure figures (tested without timing anything) ------------------------------------------
def latency_summary(seconds: list[float], batch: int) -> dict:
    """Per-image milliseconds: median, quartiles, extremes, relative spread."""
    per_image = np.asarray(seconds, np.float64) * 1e3 / batch
    median = float(np.median(per_image))
    p25, p75 = (float(v) for v in np.percentile(per_image, [25, 75]))
    return {"median_ms": median, "p25_ms": p25, "p75_ms": p75,
            "min_ms": float(per_image.min()), "max_ms": float(per_image.max()),
            "iqr_over_median": (p75 - p25) / median if median > 0 else float("nan"),
            "runs": int(per_image.size)}


def throughput_figures(summary: dict, flop_per_image: int, peak_gflops: float) -> dict:
    """GFLOP/s at the median (and at the best run), their fraction of the peak, and the
    measurement-error flag: no program can beat the machine's measured peak."""
    median_gflops = flop_per_image / (summary["median_ms"] * 1e-3) / 1e9
    best_gflops = flop_per_image / (summary["min_ms"] * 1e-3) / 1e9
    exceeds = best_gflops > peak_gflops
    return {"gflops_per_s": median_gflops, "best_gflops_per_s": best_gflops,
            "peak_fraction": median_gflops / peak_gflops,
            "best_peak_fraction": best_gflops / peak_gflops,
            "exceeds_peak": bool(exceeds),
            "flag": ("MEASUREMENT ERROR: faster than the machine's measured float32 matmul "
                     "peak; the timer cannot have waited for the result") if exceeds else None}


def peak_from_runs(runs: dict[str, list[float]], n: int) -> dict:
    """The machine's float32 peak: the highest throughput any library reached. Also the
    median over rounds of each round's best library, which shows how much outside load
    there was (runs[lib][i] is round i)."""
    flop = 2 * n ** 3
    by_library = {lib: flop / min(sec) / 1e9 for lib, sec in runs.items() if sec}
    if not by_library:
        raise BenchError("no matmul peak could be measured")
    best = max(by_library, key=by_library.get)
    rounds = min(len(sec) for sec in runs.values())
    per_round = [max(flop / runs[lib][i] / 1e9 for lib in runs) for i in range(rounds)]
    return {"gflops_per_s": by_library[best], "library": best, "by_library": by_library,
            "median_round_gflops_per_s": float(np.median(per_round)) if per_round else None,
            "matrix_n": n, "flop_per_product": flop}


def evaluate_floors(backends: dict, size: tuple[int, int], batch: int) -> list[dict]:
    """The speed floors, each with its measured value and whether it held."""
    floors = []
    jax = backends.get("jax", {})
    if not jax.get("available"):
        return floors

    def add(name, value, threshold, passed):
        floors.append({"floor": name, "value": value, "threshold": threshold,
                       "passed": bool(passed)})

    for other, key, threshold in (("torch", "speedup_over_torch", FLOOR_JAX_OVER_TORCH),
                                  ("torch-compile", "speedup_over_torch_compile",
                                   FLOOR_JAX_OVER_COMPILE)):
        if backends.get(other, {}).get("available"):
            ratio = backends[other]["median_ms"] / jax["median_ms"]
            add(f"jax {key} (median latency ratio)", ratio, threshold, ratio >= threshold)
    if backends.get("nnx", {}).get("available"):
        ratio = backends["nnx"]["median_ms"] / jax["median_ms"]
        add("nnx over jax (median latency ratio, at most)", ratio, FLOOR_NNX_OVER_JAX,
            ratio <= FLOOR_NNX_OVER_JAX)
    add("jax fraction of measured float32 matmul peak", jax["peak_fraction"],
        FLOOR_JAX_PEAK_FRACTION, jax["peak_fraction"] >= FLOOR_JAX_PEAK_FRACTION)
    for name, fig in backends.items():
        if fig.get("available"):
            add(f"{name} peak RSS of one inference (MiB)", fig["peak_rss_mib"],
                FLOOR_PEAK_RSS_MIB, fig["peak_rss_mib"] < FLOOR_PEAK_RSS_MIB)
    if (size, batch) != (DEFAULT_SIZE, 1):
        for f in floors:
            f["note"] = "the floors are defined at 400x600, batch 1"
    return floors


# ---- worker processes -----------------------------------------------------------------------
class WorkerProcess:
    """A parity.bench.worker subprocess with a line-based JSON conversation."""

    def __init__(self, label: str, env: dict | None = None):
        self.label = label
        self._proc = start_worker("parity.bench.worker", env=env, conversation=True)
        self._replies: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self):
        for line in self._proc.stdout:
            if line.startswith(REPLY_PREFIX):
                self._replies.put(json.loads(line[len(REPLY_PREFIX):]))
        self._replies.put(None)

    def _read_stderr(self):
        for line in self._proc.stderr:
            self._stderr = (self._stderr + [line.rstrip()])[-20:]

    def request(self, payload: dict, timeout: float = 600) -> dict:
        try:
            self._proc.stdin.write(json.dumps(payload) + "\n")
            self._proc.stdin.flush()
            answer = self._replies.get(timeout=timeout)
        except (BrokenPipeError, queue.Empty):
            answer = None
        if answer is None:
            last = next((s for s in reversed(self._stderr) if s.strip()), "no output")
            self.close()
            raise BenchError(f"{self.label} worker failed on {payload.get('op')}: {last}")
        if not answer.get("ok") and "unavailable" not in answer:
            raise BenchError(f"{self.label} worker: {answer.get('error')}")
        return answer

    def close(self):
        if self._proc.poll() is None:
            try:
                self._proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self._proc.stdin.flush()
                self._proc.wait(timeout=10)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()


def worker_env(backend: str) -> dict:
    """Environment of a backend's worker. PyTorch's OpenMP threads wait passively at
    barriers: libgomp's default busy-wait collapses when any other program shares the
    cores (a dim-16 forward on a 24x40 image measured 650 ms instead of 4 ms with one
    other busy process on this 2-core machine), which would make torch look slow for
    no fault of its own. An explicit OMP_WAIT_POLICY from the user is kept."""
    if backend.startswith("torch") and "OMP_WAIT_POLICY" not in os.environ:
        return {"OMP_WAIT_POLICY": "PASSIVE"}
    return {}


# ---- the run ---------------------------------------------------------------------------------
def _peak_round(worker: WorkerProcess, n: int, runs: dict) -> None:
    """One N x N product per library (the worker warmed each up on first use)."""
    for lib in PEAK_LIBRARIES:
        runs[lib] += worker.request({"op": "matmul", "library": lib, "n": n, "repeats": 1},
                                    timeout=SETUP_TIMEOUT_S)["seconds"]


def timed_rounds(workers: dict, peak_worker: WorkerProcess, peak_n: int, peak_runs: dict,
                 repeats: int, show_progress: bool, timeout: float = 600
                 ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """`repeats` interleaved rounds: the matmul peak, then one timed run of each worker in
    turn (so a change of machine load touches every row alike). Returns each worker's
    seconds per round and its peak RSS (MiB) as last reported."""
    from core.progress import progress

    seconds: dict[str, list[float]] = {name: [] for name in workers}
    rss: dict[str, float] = {}
    for _ in progress(range(repeats), desc="timed rounds", unit="round",
                      disable=not show_progress):
        _peak_round(peak_worker, peak_n, peak_runs)
        for name, worker in workers.items():
            answer = worker.request({"op": "time", "repeats": 1}, timeout=timeout)
            seconds[name] += answer["seconds"]
            if "peak_rss_mib" in answer:
                rss[name] = answer["peak_rss_mib"]
    return seconds, rss


def _setup_backends(opts: BenchOptions, workers: dict, backends: dict) -> None:
    from core.progress import progress

    height, width = opts.size
    for name in progress(opts.backends, desc="set up backends", unit="backend",
                         disable=not opts.show_progress):
        workers[name] = WorkerProcess(name, env={**worker_env(name), **opts.env})
        setup = {"op": "setup", "backend": name, "weights": str(opts.weights),
                 "batch": opts.batch, "height": height, "width": width,
                 "channels_last": opts.torch_channels_last, "jax_fast": opts.jax_fast}
        answer = workers[name].request(setup, timeout=SETUP_TIMEOUT_S)
        if not answer["ok"]:
            backends[name] = {"available": False, "reason": answer["unavailable"]}
            workers.pop(name).close()
            continue
        backends[name] = {"available": True, **{k: v for k, v in answer.items() if k != "ok"}}


def run_bench(opts: BenchOptions) -> dict:
    """Set every backend up (compiling where needed), then `repeats` rounds of: one
    matmul per library for the peak, one forward per backend. Interleaving puts the
    peak and every backend under the same outside load."""
    from weights.convert import load_checkpoint

    ckpt = load_checkpoint(opts.weights)
    height, width = opts.size
    flop_per_image = network_flops(ckpt.config, height, width)
    workers: dict[str, WorkerProcess] = {}
    backends: dict[str, dict] = {}
    peak_runs: dict[str, list[float]] = {lib: [] for lib in PEAK_LIBRARIES}
    peak_worker = WorkerProcess("matmul-peak", env={**worker_env("torch"), **opts.env})
    try:
        _setup_backends(opts, workers, backends)
        seconds, _ = timed_rounds(workers, peak_worker, opts.peak_n, peak_runs, opts.repeats,
                                  opts.show_progress)
        if opts.profile and "jax" in workers:
            backends["jax"]["profile"] = workers["jax"].request({"op": "profile"})["profile"]
    finally:
        for worker in [peak_worker, *workers.values()]:
            worker.close()
    peak = peak_from_runs(peak_runs, opts.peak_n)
    for name, secs in seconds.items():
        summary = latency_summary(secs, opts.batch)
        backends[name].update(summary)
        backends[name].update(throughput_figures(summary, flop_per_image, peak["gflops_per_s"]))
    return {
        "size": {"height": height, "width": width}, "batch": opts.batch,
        "weights": str(opts.weights), "config": json.loads(ckpt.config.to_json()),
        "flop_per_image": flop_per_image, "gflop_per_image": flop_per_image / 1e9,
        "peak": peak, "backends": backends,
        "floors": evaluate_floors(backends, opts.size, opts.batch),
        "worker_environment": {name: {**worker_env(name), **opts.env} for name in opts.backends},
        "machine": machine_description(),
    }


def machine_description() -> dict:
    info = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), None)
        info["cpu"] = model
    except OSError:
        pass
    try:
        info["load_average_at_end"] = os.getloadavg()
    except OSError:
        pass
    return info
