"""The backends `dln bench` times, and the timing loop.

Every backend runs through the one predictor (frameworks.predictor.Predictor): its
`prepare(x)` places a batch where the backend wants it and runs one warm-up forward
(JAX and torch.compile: the compilation, outside any timing), and `step()` runs one
forward pass and returns once the result exists (JAX: block_until_ready; PyTorch on
the CPU is synchronous), so that a timed step is the network alone.
"""

from __future__ import annotations

from typing import Callable

from frameworks.predictor import BACKENDS, BackendUnavailable  # noqa: F401


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
