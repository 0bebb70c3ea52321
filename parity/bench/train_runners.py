"""One training step per backend, ready to time: the trainers `dln train` runs, on one batch.

A train runner holds a framework's trainer (frameworks.trainers.make_trainer: the same
object `dln train` steps) started from the checkpoint's weights with fresh Adam
moments, and one seeded batch of `batch` crops of `patch` x `patch` pixels (a dark
input and its brighter target, NHWC float32 as core.data delivers them). `step()` is one
full training step as the training loop calls it: the batch handed over from numpy,
the authors' loss, its gradients, the Adam update; it returns once the new weights
exist (JAX: block_until_ready on the weights, Adam state and loss; PyTorch on the CPU
is synchronous).

Backends:
- jax: port.trainer.JaxTrainer as `dln train` runs it: the port's training rewrites
  (port.fast_training, port.conv_grads) and glibc keeping freed memory
  (port.host_memory);
- jax-plain: the same trainer without either (autodiff of the model with only the
  1x1 convolutions as matrix products: the step as it was before them), to state what
  they gain in the same run;
- torch: reference_torch.trainer.TorchTrainer (eager, torch.optim.Adam);
- torch-compile: the same trainer with its model wrapped in torch.compile (Inductor
  compiles the forward and, through AOTAutograd, the backward; Adam stays eager);
  compiled in `prepare`, outside the timing.
"""

from __future__ import annotations

import numpy as np

from parity.bench.backends import BackendUnavailable

TRAIN_BACKENDS = ("jax", "torch", "torch-compile", "jax-plain")
DEFAULT_TRAIN_BACKENDS = ("jax", "torch", "torch-compile")
BENCH_LR = 1e-5
WARMUP_STEPS = 2  # the first compiles (JAX, torch.compile); the second settles allocators


def train_batch(batch: int, patch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded dark input and a brighter target, NHWC float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    high = rng.random((batch, patch, patch, 3), dtype=np.float32)
    low = (high * rng.uniform(0.1, 0.4, (batch, 1, 1, 1))).astype(np.float32)
    return low, high


class TrainRunner:
    """What the benchmark worker times (as the predictor's prepare / step for inference):
    prepare() builds the batch and runs the warm-up steps, step() runs one training step;
    `settings` says how the trainer was configured."""

    def __init__(self, backend: str, ckpt, batch: int, patch: int):
        from core.recipe import AUTHORS_RECIPE
        from weights.training_checkpoint import TrainingCheckpoint

        if backend not in TRAIN_BACKENDS:
            raise ValueError(f"unknown backend {backend!r} (choose from "
                             f"{', '.join(TRAIN_BACKENDS)})")
        self.name = backend
        self.settings: dict = {}
        self.batch, self.patch = batch, patch
        self._state = TrainingCheckpoint(dict(ckpt.flax_params))
        self._config = ckpt.config
        self._recipe = AUTHORS_RECIPE
        self._low = self._high = None
        self.trainer = self._make_trainer()

    def _make_trainer(self):
        from frameworks.trainers import make_trainer

        if self.name.startswith("jax"):
            from port.trainer import JaxTrainer

            fast = self.name == "jax"
            trainer = JaxTrainer(self._config, self._state, self._recipe,
                                 fast_gradients=None if fast else False,
                                 keep_host_memory=fast)
            self.settings = {"trainer": trainer.describe(),
                             "rewrites": trainer.rewrites()}
            return trainer
        trainer = make_trainer("torch", self._config, self._state, self._recipe)
        import torch

        self.settings = {"trainer": trainer.describe(), "threads": torch.get_num_threads(),
                         "memory_format": "NCHW", "optimizer": "torch.optim.Adam (default)"}
        if self.name == "torch-compile":
            trainer.model = torch.compile(trainer.model)
            self.settings["compile"] = "torch.compile(model, backend='inductor'); Adam eager"
        return trainer

    def prepare(self, x_nhwc=None) -> None:
        self._low, self._high = train_batch(self.batch, self.patch)
        try:
            for _ in range(WARMUP_STEPS):
                self.step()
        except Exception as err:  # noqa: BLE001 - any compiler failure means "unavailable"
            if self.name == "torch-compile":
                reason = " ".join(str(err).split())[:300] or type(err).__name__
                raise BackendUnavailable(f"torch.compile failed: {reason}") from None
            raise

    def step(self) -> None:
        loss = self.trainer.step(self._low, self._high, BENCH_LR)
        if self.name.startswith("jax"):
            import jax

            jax.block_until_ready((self.trainer.params, self.trainer.opt_state, loss))

    def train_profile(self, runs: int = 2) -> dict:
        """Per-kind op times of the JAX train step (parity.bench.train_profile)."""
        if not self.name.startswith("jax"):
            raise ValueError("the training profile needs a jax backend")
        from parity.bench.train_profile import profile_step

        trainer = self.trainer
        low, high = trainer.device_batch(self._low, self._high)
        args = (trainer.params, trainer.opt_state, low, high, np.float32(BENCH_LR))
        return profile_step(trainer.train_step, args, runs=runs, carry=2)


def make_train_runner(backend: str, ckpt, batch: int, patch: int) -> TrainRunner:
    return TrainRunner(backend, ckpt, batch, patch)
