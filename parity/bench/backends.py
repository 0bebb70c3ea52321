"""One forward pass per backend, ready to time: the same weights, the same input.

A runner owns a model on one backend ("jax", "torch", "torch-compile") and an
input batch placed where that backend wants it, so that `step()` times only the
network: it runs one forward pass and returns once the result exists (JAX:
block_until_ready; PyTorch on the CPU is synchronous). `infer(image)` runs one
RGB float32 HWC image and returns the float32 HWC output, for metrics.

Each backend gets its own best documented CPU settings, nothing that changes the
arithmetic beyond float32 rounding:
- jax: the whole forward is one jit, parameters on the device once, inputs
  transferred before timing; by default the 1 x 1 convolutions are computed as
  dots (port.pointwise: same arithmetic, XLA's faster path); `fast=False` runs
  port.inference.make_apply exactly.
- torch: eval mode, inference_mode, all cores (torch's default thread count), and
  the memory format (NCHW or channels_last) chosen by the caller.
- torch-compile: torch.compile (Inductor) of the same eval model, with Inductor's
  `freezing` (constant-folds and pre-packs the weights for oneDNN, the documented
  CPU inference setting); compilation happens in `prepare`, not in the timing.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

BACKENDS = ("jax", "torch", "torch-compile")


class BackendUnavailable(RuntimeError):
    """A backend that cannot run here (e.g. torch.compile without a working compiler)."""


class Runner:
    """Interface: `settings` (what was configured), prepare(x), step(), infer(image)."""

    name = ""

    def __init__(self):
        self.settings: dict = {}

    def prepare(self, x_nhwc: np.ndarray) -> None:
        raise NotImplementedError

    def step(self) -> None:
        raise NotImplementedError

    def infer(self, image_hwc: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class JaxRunner(Runner):
    name = "jax"

    def __init__(self, ckpt, fast: bool = True):
        super().__init__()
        import jax

        from port.inference import make_apply, params_to_device

        self._jax = jax
        self._apply = make_apply(ckpt.config, pointwise_as_dot=fast)
        self._params = params_to_device(ckpt.flax_tree())
        self._config = ckpt.config
        self._x = None
        self.settings = {"jit": "whole forward", "devices": str(jax.devices()[0]),
                         "jax": jax.__version__,
                         "pointwise_convs": "dot_general" if fast else "convolution",
                         "xla_flags": os.environ.get("XLA_FLAGS", "")}

    def prepare(self, x_nhwc):
        self._x = self._jax.device_put(np.ascontiguousarray(x_nhwc, np.float32))
        self.step()  # compile for this shape outside any timing

    def step(self):
        self._apply(self._params, self._x).block_until_ready()

    def infer(self, image_hwc):
        x = self._jax.device_put(np.ascontiguousarray(image_hwc, np.float32)[None])
        return np.asarray(self._apply(self._params, x).block_until_ready())[0]

    def profile(self, runs: int = 2) -> dict:
        """Per-op / per-layer times of the prepared forward (parity.bench.jax_profile)."""
        from parity.bench.jax_profile import profile_forward

        return profile_forward(self._apply, self._params, self._x, self._config, runs)

    def compiled_stats(self) -> dict:
        """XLA's own view of the compiled forward: buffer bytes and HLO FLOP count."""
        compiled = self._apply.lower(self._params, self._x).compile()
        stats: dict = {}
        memory = compiled.memory_analysis()
        if memory is not None:
            stats["xla_temp_bytes"] = int(memory.temp_size_in_bytes)
            stats["xla_argument_bytes"] = int(memory.argument_size_in_bytes)
            stats["xla_output_bytes"] = int(memory.output_size_in_bytes)
        cost = compiled.cost_analysis()
        if isinstance(cost, list):  # older jax returned one dict per device
            cost = cost[0] if cost else None
        if cost and "flops" in cost:
            stats["xla_hlo_flops"] = float(cost["flops"])
        return stats


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, ckpt, channels_last: bool = False, compile_model: bool = False):
        super().__init__()
        import torch

        from reference_torch.inference import model_from_state

        self._torch = torch
        self._channels_last = channels_last
        model = model_from_state(ckpt.torch_state, ckpt.config)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.settings = {"threads": torch.get_num_threads(), "torch": torch.__version__,
                         "memory_format": "channels_last" if channels_last else "NCHW",
                         "mode": "inference_mode"}
        if compile_model:
            model = self._compiled(model)
            self.name = "torch-compile"
        self._model = model
        self._x = None

    def _compiled(self, model):
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        self.settings.update({"compile": "torch.compile(backend='inductor')",
                              "inductor_freezing": True})
        return self._torch.compile(model)

    def _to_input(self, x_nhwc: np.ndarray):
        x = self._torch.from_numpy(np.ascontiguousarray(x_nhwc, np.float32)).permute(0, 3, 1, 2)
        fmt = self._torch.channels_last if self._channels_last else self._torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    def _forward(self, x):
        with self._torch.inference_mode():
            return self._model(x)

    def prepare(self, x_nhwc):
        self._x = self._to_input(x_nhwc)
        try:
            self.step()  # warm-up; for torch.compile this is the compilation
        except Exception as err:  # noqa: BLE001 - any compiler failure means "unavailable"
            if self.name == "torch-compile":
                reason = " ".join(str(err).split())[:300] or type(err).__name__
                raise BackendUnavailable(f"torch.compile failed: {reason}") from None
            raise

    def step(self):
        self._forward(self._x)

    def infer(self, image_hwc):
        y = self._forward(self._to_input(image_hwc[None]))
        return y.permute(0, 2, 3, 1).contiguous().numpy()[0]


def make_runner(backend: str, ckpt, channels_last: bool = False, jax_fast: bool = True) -> Runner:
    """A runner for `backend` holding the checkpoint's weights."""
    if backend == "jax":
        return JaxRunner(ckpt, fast=jax_fast)
    if backend == "torch":
        return TorchRunner(ckpt, channels_last=channels_last)
    if backend == "torch-compile":
        return TorchRunner(ckpt, channels_last=channels_last, compile_model=True)
    raise ValueError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")


def time_steps(step: Callable[[], None], repeats: int, clock=None) -> list[float]:
    """Wall-clock seconds of `repeats` calls of step (already warmed up)."""
    import time

    clock = clock or time.perf_counter
    seconds = []
    for _ in range(repeats):
        start = clock()
        step()
        seconds.append(clock() - start)
    return seconds
