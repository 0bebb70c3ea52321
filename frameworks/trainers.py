"""A framework's trainer by name: the one place that maps "jax" / "nnx" / "torch" to a trainer.

The lowest layer that sees both models (port and reference_torch never import each
other), so `dln train` (dln.training_loop) and training parity (parity.grads) pick
their trainer here. The trainers share one interface (dln.training_loop's docstring)
and read their hyper-parameters from a core.recipe.TrainingRecipe. Inference backends
have the same kind of dispatch in parity.bench.backends.make_runner.
"""

from __future__ import annotations

from core.config import DLNConfig
from core.recipe import AUTHORS_RECIPE, TrainingRecipe

FRAMEWORKS = ("jax", "nnx", "torch")


def make_trainer(framework: str, config: DLNConfig, state, recipe: TrainingRecipe = AUTHORS_RECIPE,
                 precision: str = "highest", devices: int | None = None, hooks=None,
                 fast_gradients: bool | None = None):
    """port.trainer.JaxTrainer (Flax Linen), port.nnx_trainer.NnxTrainer (Flax NNX) or
    reference_torch.trainer.TorchTrainer from `state` (a
    weights.training_checkpoint.TrainingCheckpoint). devices: JAX data parallel over the
    first N local devices (None: all); the PyTorch trainer uses one device. hooks: the
    Linen step's injection points (port.trainer.StepHooks; the training zoo's defects).
    fast_gradients: the Linen step's training rewrites (None: JaxTrainer's default, on a
    CPU mesh only)."""
    if framework == "jax":
        from port.trainer import NO_HOOKS, JaxTrainer

        return JaxTrainer(config, state, recipe, precision=precision, devices=devices,
                          hooks=hooks or NO_HOOKS, fast_gradients=fast_gradients)
    if hooks is not None:
        raise ValueError("step hooks are the Linen trainer's (defects are injected there only)")
    if framework == "nnx":
        from port.nnx_trainer import NnxTrainer

        return NnxTrainer(config, state, recipe, precision=precision, devices=devices)
    if framework == "torch":
        from reference_torch.trainer import TorchTrainer

        return TorchTrainer(config, state, recipe, precision=precision)
    raise ValueError(f"unknown framework {framework!r} (choose from {', '.join(FRAMEWORKS)})")
