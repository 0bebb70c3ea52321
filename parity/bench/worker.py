"""A benchmark worker: one fresh process per backend, driven over stdin/stdout.

Run as `python -m parity.bench.worker`. Each request is one JSON line on stdin;
each reply is one JSON line on stdout starting with REPLY_PREFIX (anything else a
library prints is ignored by the driver). Requests:

  {"op": "setup", "backend": ..., "weights": path, "batch": B, "height": H,
   "width": W, "channels_last": bool, "seed": S}
      load the weights, build the runner, run one warm-up forward (for JAX and
      torch.compile: the compilation), and report the process's peak resident set
      (getrusage ru_maxrss) after it: a fresh process holding the model and doing
      one inference, so the figure includes everything the backend allocates
      natively (oneDNN / XLA buffers), not only Python objects.
      With "workload": "train" (and "patch": P): a training runner instead
      (parity.bench.train_runners: the framework's trainer, one batch of B crops of
      P x P), warmed up by its first steps.
  {"op": "time", "repeats": n}            seconds of n forward passes (training steps),
      and the peak resident set so far
  {"op": "matmul", "library": "numpy" | "torch" | "jax", "n": N, "repeats": r}
      seconds of r (N x N) @ (N x N) float32 products, after one warm-up
  {"op": "profile"}   (jax only) per-op times of the forward, parity.bench.jax_profile
  {"op": "per_image", "sizes": [[H, W], ...], "repeats": r}
      after setup: for each size, one forward pass of one image at exactly that size
      (JAX: compiled first), timed r times; the best of each, in seconds
  {"op": "quit"}

Separate processes keep the backends' thread pools and allocators apart, while
the driver interleaves their timed runs so that load from other programs falls
on all backends alike.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback

import numpy as np

REPLY_PREFIX = "@@bench "


def rss_mib() -> float:
    """Current resident set of this process, MiB (from /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """High-water resident set of this process, MiB.

    VmHWM of the process's own address space where Linux has it: ru_maxrss also carries the
    forking parent's high-water mark across exec, which would report the parent's peak when
    the parent is the larger process.
    """
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Worker:
    def __init__(self):
        self.runner = None
        self._matmul_cache: dict = {}

    def setup(self, req: dict) -> dict:
        from frameworks.predictor import BackendUnavailable, Predictor
        from weights.convert import load_checkpoint

        ckpt = load_checkpoint(req["weights"])
        before = rss_mib()
        try:
            if req.get("workload") == "train":
                from parity.bench.train_runners import make_train_runner

                runner = make_train_runner(req["backend"], ckpt, req["batch"], req["patch"])
                x = None
            else:
                x = np.random.default_rng(req.get("seed", 0)).random(
                    (req["batch"], req["height"], req["width"], 3), dtype=np.float32)
                runner = Predictor(ckpt, req["backend"], jax_fast=req.get("jax_fast", True),
                                   channels_last=req.get("channels_last", False))
            start = time.perf_counter()
            runner.prepare(x)
            warmup = time.perf_counter() - start
        except BackendUnavailable as err:
            return {"ok": False, "unavailable": str(err)}
        self.runner = runner
        reply = {"ok": True, "settings": runner.settings, "warmup_s": warmup,
                 "rss_before_mib": before, "peak_rss_mib": peak_rss_mib()}
        if getattr(runner, "backend", None) in ("jax", "nnx"):
            from parity.bench.jax_profile import compiled_stats

            reply["xla"] = compiled_stats(*runner.jax_forward)
        return reply

    def time(self, req: dict) -> dict:
        from parity.bench.backends import time_steps

        if self.runner is None:
            return {"ok": False, "error": "time before setup"}
        return {"ok": True, "seconds": time_steps(self.runner.step, int(req["repeats"])),
                "peak_rss_mib": peak_rss_mib()}

    def profile(self, req: dict) -> dict:
        if self.runner is not None and hasattr(self.runner, "train_profile"):
            return {"ok": True, "profile": self.runner.train_profile(int(req.get("runs", 2)))}
        if self.runner is None or getattr(self.runner, "backend", None) != "jax":
            return {"ok": False, "error": "profile needs the jax backend, set up first"}
        from parity.bench.jax_profile import profile_forward

        return {"ok": True, "profile": profile_forward(*self.runner.jax_forward,
                                                       self.runner.config,
                                                       int(req.get("runs", 2)))}

    def per_image(self, req: dict) -> dict:
        from parity.bench.backends import time_steps

        if self.runner is None:
            return {"ok": False, "error": "per_image before setup"}
        rng = np.random.default_rng(0)
        best = []
        for height, width in req["sizes"]:
            self.runner.prepare(rng.random((1, height, width, 3), dtype=np.float32))
            best.append(min(time_steps(self.runner.step, int(req.get("repeats", 1)))))
        return {"ok": True, "seconds": best}

    def _matmul_step(self, library: str, n: int):
        key = (library, n)
        if key in self._matmul_cache:
            return self._matmul_cache[key]
        a = np.random.default_rng(1).random((n, n), dtype=np.float32)
        b = np.random.default_rng(2).random((n, n), dtype=np.float32)
        if library == "numpy":
            def step():
                np.matmul(a, b)
        elif library == "torch":
            import torch

            ta, tb = torch.from_numpy(a), torch.from_numpy(b)

            def step():
                with torch.inference_mode():
                    torch.matmul(ta, tb)
        elif library == "jax":
            import jax
            import jax.numpy as jnp

            ja, jb = jax.device_put(a), jax.device_put(b)
            product = jax.jit(lambda p, q: jnp.matmul(p, q, precision="highest"))

            def step():
                product(ja, jb).block_until_ready()
        else:
            raise ValueError(f"unknown matmul library {library!r}")
        step()  # warm-up (and compile)
        self._matmul_cache[key] = step
        return step

    def matmul(self, req: dict) -> dict:
        from parity.bench.backends import time_steps

        step = self._matmul_step(req["library"], int(req["n"]))
        return {"ok": True, "seconds": time_steps(step, int(req["repeats"]))}


def reply(obj: dict) -> None:
    sys.stdout.write(REPLY_PREFIX + json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> int:
    worker = Worker()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            op = req.get("op")
            if op == "quit":
                reply({"ok": True})
                return 0
            if op not in ("setup", "time", "matmul", "profile", "per_image"):
                reply({"ok": False, "error": f"unknown op {op!r}"})
                continue
            reply(getattr(worker, op)(req))
        except Exception as err:  # noqa: BLE001 - reported to the driver, which decides
            last = traceback.format_exc().strip().splitlines()[-1]
            reply({"ok": False, "error": f"{type(err).__name__}: {err}"[:500], "where": last})
    return 0


if __name__ == "__main__":
    sys.exit(main())
