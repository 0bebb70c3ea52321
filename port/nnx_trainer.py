"""The Flax NNX side of training: nnx.Optimizer with optax's Adam, one jitted pure train step.

The trainer interface is port/trainer.py's JaxTrainer's (dln/training_loop.py's docstring:
step, loss_value, weights, export, enhancer, describe), registered as framework "nnx" in
parity/trainers.py, so `dln train --framework nnx` and training parity run it unchanged.
It is built on the public pieces only: the one recipe (core.recipe: Adam's betas and
eps, the loss weight), the one loss (port.losses.dln_loss), port.trainer's Adam scaling
and device mesh, and the NNX model of port/nnx_model.py.

The optimiser is `nnx.Optimizer(model, tx, wrt=nnx.Param)` with tx =
`optax.scale_by_adam(b1, b2, eps)` (as JaxTrainer: bias-corrected moments, eps outside
the root, torch.optim.Adam's update) chained with a scaling by -lr, where lr is a
keyword argument of each update (`optimizer.update(model, grads, learning_rate=lr)`),
so the authors' decays never recompile. The new weight is w + (-lr) * u, which is
JaxTrainer's w - lr * u in IEEE arithmetic.

The step is `jax.jit` of a pure function of (model state, optimizer state, low, high,
lr): the graphs are split once here, merged inside the traced function (trace-time work
only), and the new states are returned, so a step is one jit dispatch with no NNX graph
walked per call (nnx.jit would walk both graphs on every call). As in JaxTrainer, the
1 x 1 convolutions are matrix products (port.nnx_inference's graph, port.pointwise's
drop-in) and the step is traced at `precision` ("highest": true float32). Data parallel
over a 1-D mesh of local devices as JaxTrainer: batch split, states replicated.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from core.config import DLNConfig
from core.errors import UserError
from core.recipe import AUTHORS_RECIPE, TrainingRecipe
from port.inference import PARITY_PRECISION
from port.losses import dln_loss
from port.nnx_inference import inference_graph, make_nnx_apply
from port.trainer import DATA_AXIS, adam, data_mesh, nested_arrays
from weights.nnx_state import dotted, flat_weights, module_from_weights
from weights.state_dict import check_names_and_shapes
from weights.training_checkpoint import TrainingCheckpoint


def scale_by_step_learning_rate() -> optax.GradientTransformationExtraArgs:
    """updates -> -learning_rate * updates, with learning_rate given to each update call."""
    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None, *, learning_rate, **extra):
        del params, extra
        return jax.tree_util.tree_map(lambda u: -learning_rate * u, updates), state

    return optax.GradientTransformationExtraArgs(init, update)


@functools.lru_cache(maxsize=16)
def nnx_adam(recipe: TrainingRecipe) -> optax.GradientTransformationExtraArgs:
    """The recipe's Adam (port.trainer.adam), then -lr. One object per recipe: the optimizer's
    graph holds it, so equal graphs (and one cached compilation) need the same object."""
    return optax.chain(adam(recipe.beta1, recipe.beta2, recipe.eps), scale_by_step_learning_rate())


def _abstract_training_model(config: DLNConfig, pointwise_as_dot: bool):
    graphdef, abstract = inference_graph(config, pointwise_as_dot)
    return nnx.merge(graphdef, nnx.from_flat_state(list(abstract.items())))


@functools.lru_cache(maxsize=16)
def make_nnx_train_step(config: DLNConfig, recipe: TrainingRecipe, model_graph, optimizer_graph,
                        mesh, precision: str = PARITY_PRECISION) -> Callable:
    """jit(model_state, optimizer_state, low, high, lr) -> (model_state, optimizer_state,
    loss); cached, so trainers with the same settings and graphs share one compilation."""
    def step(model_state, optimizer_state, low, high, lr):
        model = nnx.merge(model_graph, model_state)
        optimizer = nnx.merge(optimizer_graph, optimizer_state)

        def loss_fn(m):
            return dln_loss(m(low), high, recipe.tv_weight)

        with jax.default_matmul_precision(precision):
            loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads, learning_rate=lr)
        return nnx.state(model), nnx.state(optimizer), loss

    on_cpu = mesh.devices.flat[0].platform == "cpu"
    donate = () if on_cpu else (0, 1)
    if mesh.devices.size == 1:  # as port.trainer: shardings on one device slow the CPU step
        return jax.jit(step, donate_argnums=donate)
    replicated = NamedSharding(mesh, PartitionSpec())
    batch = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return jax.jit(step, in_shardings=(replicated, replicated, batch, batch, replicated),
                   out_shardings=(replicated, replicated, replicated), donate_argnums=donate)


def _moments(optimizer_state) -> tuple[dict, dict, int]:
    """(mu, nu, count) of the Adam state inside an nnx.Optimizer's state, flat names."""
    mu, nu, count = {}, {}, 0
    for path, var in nnx.to_flat_state(optimizer_state):
        if path[:2] == ("opt_state", 0) and path[2] in ("mu", "nu"):
            (mu if path[2] == "mu" else nu)[dotted(path[3:])] = np.asarray(var[...], np.float32)
        elif path == ("opt_state", 0, "count"):
            count = int(var[...])
    return mu, nu, count


def _with_moments(optimizer_state, mu: dict, nu: dict, count: int):
    """The optimizer state with Adam's moments and step count replaced, strictly."""
    names = {dotted(p[3:]): tuple(v.shape) for p, v in nnx.to_flat_state(optimizer_state)
             if p[:2] == ("opt_state", 0) and p[2] == "mu"}
    check_names_and_shapes(mu, names, "Adam first moments do not fit the NNX model")
    check_names_and_shapes(nu, names, "Adam second moments do not fit the NNX model")
    replaced = []
    for path, var in nnx.to_flat_state(optimizer_state):
        if path[:2] == ("opt_state", 0) and path[2] in ("mu", "nu"):
            table = mu if path[2] == "mu" else nu
            var = var.replace(jnp.asarray(table[dotted(path[3:])], jnp.float32))
        elif path in (("opt_state", 0, "count"), ("step",)):
            var = var.replace(jnp.asarray(count, var[...].dtype))
        replaced.append((path, var))
    return nnx.from_flat_state(replaced)


class NnxTrainer:
    """The NNX side of dln.training_loop's loop (see there for the interface)."""

    def __init__(self, config: DLNConfig, state: TrainingCheckpoint,
                 recipe: TrainingRecipe = AUTHORS_RECIPE, precision: str = PARITY_PRECISION,
                 devices: int | list | None = None, pointwise_as_dot: bool = True):
        self.config = config
        self.precision = precision
        self.mesh = data_mesh(devices)
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
        model = module_from_weights(_abstract_training_model(config, pointwise_as_dot),
                                    {k: np.asarray(v, np.float32) for k, v in state.params.items()},
                                    "training weights")
        optimizer = nnx.Optimizer(model, nnx_adam(recipe), wrt=nnx.Param)
        model_graph, model_state = nnx.split(model)
        optimizer_graph, optimizer_state = nnx.split(optimizer)
        if state.mu is not None and state.nu is not None:
            optimizer_state = _with_moments(optimizer_state, state.mu, state.nu, int(state.count))
        self.model_state = jax.device_put(model_state, self.replicated)
        self.optimizer_state = jax.device_put(optimizer_state, self.replicated)
        self.count = int(state.count)
        self._graphs = (model_graph, optimizer_graph)
        self._step = make_nnx_train_step(config, recipe, model_graph, optimizer_graph, self.mesh,
                                         precision)
        self._apply = None

    @property
    def device_count(self) -> int:
        return int(self.mesh.devices.size)

    def describe(self) -> str:
        kinds = sorted({d.device_kind for d in self.mesh.devices.flat})
        return (f"jax {jax.__version__} (Flax NNX): data parallel over {self.device_count} "
                f"device(s) ({', '.join(kinds)}), precision {self.precision}")

    def step(self, low: np.ndarray, high: np.ndarray, lr: float):
        if low.shape[0] % self.device_count:
            raise UserError(f"batch {low.shape[0]} does not split over {self.device_count} "
                            "devices; choose a multiple")
        low = jax.device_put(low, self.batch_sharding)
        high = jax.device_put(high, self.batch_sharding)
        self.model_state, self.optimizer_state, loss = self._step(
            self.model_state, self.optimizer_state, low, high, jnp.float32(lr))
        self.count += 1
        return loss

    @staticmethod
    def loss_value(loss) -> float:
        return float(jax.device_get(loss))

    def model(self):
        """The NNX DLN with the current weights (a fresh merge of the graph and state)."""
        return nnx.merge(self._graphs[0], jax.device_get(self.model_state))

    def weights(self) -> dict[str, np.ndarray]:
        """The current weights, flat Flax names, float32 numpy."""
        return flat_weights(self.model())

    def export(self) -> TrainingCheckpoint:
        mu, nu, count = _moments(jax.device_get(self.optimizer_state))
        return TrainingCheckpoint(self.weights(), mu, nu, count)

    def enhancer(self, weights: dict[str, np.ndarray] | None = None
                 ) -> Callable[[np.ndarray], np.ndarray]:
        """HWC float32 image -> network output, with the current weights (or `weights`,
        flat Flax names), on one device, through the NNX apply."""
        if self._apply is None:
            self._apply = make_nnx_apply(self.config, pointwise_as_dot=False,
                                         precision=self.precision)
        device = self.mesh.devices.flat[0]
        params = jax.device_put(nested_arrays(self.weights() if weights is None else weights),
                                device)
        apply = self._apply

        def enhance(image: np.ndarray) -> np.ndarray:
            x = jax.device_put(np.asarray(image, np.float32)[None], device)
            return np.asarray(jax.device_get(apply(params, x)))[0]

        return enhance
