"""The Flax side of training: optax Adam and one jit-compiled, data-parallel train step.

This module is one framework's training *step* (and the trainer object that holds its
state); the loop around it, the schedule, logging and checkpoints are dln/training_loop.py,
shared with the PyTorch twin reference_torch/trainer.py. The hyper-parameters come from
a core.recipe.TrainingRecipe (the authors' by default).

Data parallel with `jax.sharding`: a 1-D mesh over the local devices (axis "data"),
every batch split along its first axis across the mesh, parameters and Adam state
replicated. The step is written for the whole global batch (loss = the authors' mean
over all of it); XLA's partitioner inserts the cross-device sums, so one device and
N devices compute the same loss up to the order of float32 reductions, and the same
command scales from a CPU to a multi-GPU machine. The global batch must divide
evenly by the number of devices.

Adam is `optax.scale_by_adam(b1, b2, eps)` (bias-corrected moments, eps outside the
square root: torch.optim.Adam's update) followed by `-lr * update`, with lr an
argument of the step, so the authors' decays never recompile.

Injection points (`StepHooks`, None in every real run): the training zoo
(parity/grads/training_zoo.py) injects defects of the step through them, never by editing
the step: `optimizer` replaces Adam (built from the recipe; its state must stay an
optax.ScaleByAdamState), `gradients` transforms the gradient tree before the optimizer.

Host memory: the trainer asks glibc to keep freed memory for reuse (port/host_memory.py),
so XLA's per-step scratch (738 MB at dim 64, batch 4 x 96^2) is not page-faulted and
zeroed again every step (0.4-0.5 s of system CPU time per step on a 2-core AMD EPYC).

Precision: the step is traced under `jax.default_matmul_precision(precision)` (the
trainer's `precision`, "highest" by default: true float32 convolutions and matmuls,
the setting training parity is measured at; "default" lets a GPU use TF32). Nothing
here changes JAX's process-wide settings.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec


from core.config import DLNConfig
from core.errors import UserError
from core.recipe import AUTHORS_RECIPE, TrainingRecipe
from weights.training_checkpoint import TrainingCheckpoint
from weights.trees import flatten_tree, nest_tree
from port.inference import PARITY_PRECISION, make_apply
from port.losses import dln_loss
from port.model import DLN
from port.fast_training import REWRITES, fast_training
from port.host_memory import keep_freed_memory
from port.pointwise import pointwise_conv_as_dot

DATA_AXIS = "data"


def data_mesh(devices: int | list | None = None) -> Mesh:
    """A 1-D mesh over the first `devices` local devices (all when None)."""
    available = jax.local_devices()
    if isinstance(devices, int):
        if devices > len(available):
            raise UserError(f"{devices} devices asked for, {len(available)} available")
        chosen = available[:devices]
    else:
        chosen = list(devices) if devices else available
    return Mesh(np.asarray(chosen), (DATA_AXIS,))


def adam(beta1: float, beta2: float, eps: float) -> optax.GradientTransformation:
    """Adam's scaling (bias-corrected, eps outside the root); the step applies -lr."""
    return optax.scale_by_adam(b1=beta1, b2=beta2, eps=eps)


def flat_arrays(tree: dict) -> dict[str, np.ndarray]:
    """A nested params / moments tree -> flat dotted Flax names, float32 numpy."""
    return {k: np.asarray(v, np.float32) for k, v in flatten_tree(tree, sep=".").items()}


def nested_arrays(flat: dict[str, np.ndarray]) -> dict:
    """Flat dotted Flax names -> the nested tree, float32 numpy."""
    return nest_tree({k: np.asarray(v, np.float32) for k, v in flat.items()}, sep=".")


@dataclasses.dataclass(frozen=True)
class StepHooks:
    """Explicit injection points of the train step (module docstring); None: the real one."""

    optimizer: Callable[[TrainingRecipe], optax.GradientTransformation] | None = None
    gradients: Callable[[dict], dict] | None = None

    def make_optimizer(self, recipe: TrainingRecipe) -> optax.GradientTransformation:
        if self.optimizer is None:
            return adam(recipe.beta1, recipe.beta2, recipe.eps)
        return self.optimizer(recipe)


NO_HOOKS = StepHooks()


@functools.lru_cache(maxsize=16)
def make_train_step(config: DLNConfig, recipe: TrainingRecipe, mesh: Mesh,
                    precision: str = PARITY_PRECISION, fast_gradients: bool = True,
                    hooks: StepHooks = NO_HOOKS) -> Callable:
    """jit(params, opt_state, low, high, lr) -> (params, opt_state, loss), sharded over mesh,
    with the recipe's Adam settings and loss weight, traced at `precision`. Cached, so
    trainers of one process with the same settings share one compilation.

    fast_gradients: the model is applied inside port.fast_training.fast_training(): the
    ConvBlocks and convolutions with written-out gradients (port/conv_grads.py) and the
    1 x 1 convolutions as matrix products; the same derivatives to float32 summation
    order. False: the step as it was before those rewrites, autodiff of port/model.py
    with only the 1 x 1 convolutions as matrix products (port/pointwise.py; that alone
    was measured 15-25% faster than plain convolutions on a 2-core AMD EPYC at batch
    4 x 96^2), the reference the rewrites are tested and timed against (`dln bench
    --workload train --backends jax,jax-plain`)."""
    model = DLN(config)
    tx = hooks.make_optimizer(recipe)

    def loss_fn(params, low, high):
        if fast_gradients:
            with fast_training():
                pred = model.apply({"params": params}, low)
        else:
            with nn.intercept_methods(pointwise_conv_as_dot):
                pred = model.apply({"params": params}, low)
        with jax.named_scope("dln_loss"):
            return dln_loss(pred, high, recipe.tv_weight)

    def step(params, opt_state, low, high, lr):
        with jax.default_matmul_precision(precision):
            loss, grads = jax.value_and_grad(loss_fn)(params, low, high)
        if hooks.gradients is not None:
            grads = hooks.gradients(grads)
        with jax.named_scope("adam"):
            updates, opt_state = tx.update(grads, opt_state, params)
            params = jax.tree_util.tree_map(lambda p, u: p - lr * u, params, updates)
        return params, opt_state, loss

    on_cpu = mesh.devices.flat[0].platform == "cpu"
    donate = () if on_cpu else (0, 1)
    if mesh.devices.size == 1:
        # One device: a plain jit. Declaring shardings on a one-device mesh makes XLA's
        # CPU backend run the step about 2x slower (measured on a 2-core AMD EPYC at
        # batch 8 x 48^2: 1.81 s vs 0.91 s per step) for the same numbers.
        return jax.jit(step, donate_argnums=donate)
    replicated = NamedSharding(mesh, PartitionSpec())
    batch = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return jax.jit(step, in_shardings=(replicated, replicated, batch, batch, replicated),
                   out_shardings=(replicated, replicated, replicated),
                   donate_argnums=donate)


class JaxTrainer:
    """The JAX side of dln.training_loop's loop (see there for the interface)."""

    def __init__(self, config: DLNConfig, state: TrainingCheckpoint,
                 recipe: TrainingRecipe = AUTHORS_RECIPE, precision: str = PARITY_PRECISION,
                 devices: int | list | None = None, hooks: StepHooks = NO_HOOKS,
                 fast_gradients: bool | None = None, keep_host_memory: bool = True):
        """fast_gradients: the training rewrites of make_train_step; None (default): on a
        CPU mesh, where they were measured, and not elsewhere. keep_host_memory:
        port.host_memory's allocator policy, applied before JAX runs anything here."""
        self.keeps_host_memory = keep_host_memory and keep_freed_memory()
        self.config = config
        self.precision = precision
        self.mesh = data_mesh(devices)
        on_cpu = self.mesh.devices.flat[0].platform == "cpu"
        self.fast_gradients = on_cpu if fast_gradients is None else bool(fast_gradients)
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
        self.tx = hooks.make_optimizer(recipe)
        params = jax.device_put(nested_arrays(state.params), self.replicated)
        if state.mu is None or state.nu is None:
            opt_state = self.tx.init(params)
        else:
            opt_state = optax.ScaleByAdamState(count=jnp.asarray(state.count, jnp.int32),
                                               mu=nested_arrays(state.mu),
                                               nu=nested_arrays(state.nu))
        self.params = params
        self.opt_state = jax.device_put(opt_state, self.replicated)
        self.count = int(state.count)
        self.train_step = make_train_step(config, recipe, self.mesh, precision,
                                          self.fast_gradients, hooks=hooks)
        self._apply = None

    @property
    def device_count(self) -> int:
        return int(self.mesh.devices.size)

    def describe(self) -> str:
        kinds = sorted({d.device_kind for d in self.mesh.devices.flat})
        return (f"jax {jax.__version__}: data parallel over {self.device_count} device(s) "
                f"({', '.join(kinds)}), precision {self.precision}"
                + ("" if self.fast_gradients else ", without the training rewrites"))

    def rewrites(self) -> list[str]:
        """The rewrites the step runs with (port.fast_training; port.pointwise alone without
        fast_gradients)."""
        rewrites = list(REWRITES) if self.fast_gradients else ["1x1 convolutions: matrix products"]
        if self.keeps_host_memory:
            rewrites.append("host memory: glibc keeps freed memory (port.host_memory)")
        if self.device_count > 1 and self.mesh.devices.flat[0].platform == "cpu":
            rewrites.append(f"CPU split into {self.device_count} host devices, the batch "
                            "across them (port.host_devices)")
        return rewrites

    def device_batch(self, low: np.ndarray, high: np.ndarray):
        """The batch on the mesh, split along its first axis."""
        if low.shape[0] % self.device_count:
            raise UserError(f"batch {low.shape[0]} does not split over {self.device_count} "
                            "devices; choose a multiple")
        return (jax.device_put(low, self.batch_sharding),
                jax.device_put(high, self.batch_sharding))

    def step(self, low: np.ndarray, high: np.ndarray, lr: float):
        low, high = self.device_batch(low, high)
        self.params, self.opt_state, loss = self.train_step(
            self.params, self.opt_state, low, high, jnp.float32(lr))
        self.count += 1
        return loss

    @staticmethod
    def loss_value(loss) -> float:
        return float(jax.device_get(loss))

    def weights(self) -> dict[str, np.ndarray]:
        """The current weights, flat Flax names, float32 numpy."""
        return flat_arrays(jax.device_get(self.params))

    def export(self) -> TrainingCheckpoint:
        params, opt = jax.device_get((self.params, self.opt_state))
        return TrainingCheckpoint(flat_arrays(params), flat_arrays(opt.mu), flat_arrays(opt.nu),
                                  int(opt.count))

    def enhancer(self, weights: dict[str, np.ndarray] | None = None
                 ) -> Callable[[np.ndarray], np.ndarray]:
        """HWC float32 image -> network output, with the current weights (or `weights`,
        flat Flax names), on one device."""
        if self._apply is None:
            self._apply = make_apply(self.config, pointwise_as_dot=False,
                                     precision=self.precision)
        device = self.mesh.devices.flat[0]
        tree = jax.device_get(self.params) if weights is None else nested_arrays(weights)
        params = jax.device_put(tree, device)
        apply = self._apply

        def enhance(image: np.ndarray) -> np.ndarray:
            x = jax.device_put(np.asarray(image, np.float32)[None], device)
            return np.asarray(jax.device_get(apply(params, x)))[0]

        return enhance
