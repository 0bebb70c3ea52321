"""The training zoo: known defects of a training step, injected into the JAX side only.

Each defect changes what the JAX trainer does in one explicit way and nothing else:
- as data: the JAX side's recipe (a loss weight, Adam's eps or betas), its learning
  rates (all scaled, or the schedule shifted by a step);
- through the step's injection points (port.trainer.StepHooks): another optimizer
  (Adam without bias correction, eps inside the square root) or a transform of the
  gradient tree (one tensor's gradients scaled).
The step's own code is never edited. Training parity (parity.grads.training_parity)
runs the correct JAX side and every defect against ONE torch run on the same
trajectory (same initial weights, same batches, same schedule), and each defect must
turn its verdict to FAIL in the check named in `shows_in`.

Statuses, as in the forward zoo (parity.zoo.mutation):
    caught           the verdict FAILs, in (at least) one of the checks the defect names
    missed           the verdict FAILs, but only in other checks (the defect is mislocated)
    below-tolerance  the verdict PASSes: every figure stays within its tolerance (shown);
                     a defect of the step that training parity lets pass is a miss too
    not-applicable   the run has no place for it (a schedule shift in a run with no decay)
The score is caught / (all but not-applicable); every defect not caught is named.
Framework-neutral here: the hooks import JAX only when built.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

from core.recipe import TrainingRecipe

CAUGHT, MISSED, BELOW, NOT_APPLICABLE = "caught", "missed", "below-tolerance", "not-applicable"
# the checks of a training parity run (parity.grads.training_parity.TrainingParityResult)
FIRST_LOSS, LOSSES, WEIGHTS, MOMENTS, UPDATES, FINITE = (
    "first loss", "losses", "final weights", "Adam moments", "updates", "finite and complete")
# the tensor whose gradients the `grad-scaled` defect scales: the first conv's kernel
SCALED_TENSOR = ("feat1", "conv", "kernel")


# ---- the optimizers and gradient transforms the hooks inject ------------------------------
def adam_without_bias_correction(recipe: TrainingRecipe):
    """Adam's moments without the 1 / (1 - beta^t) corrections (state kept as optax's)."""
    import jax
    import jax.numpy as jnp
    import optax

    def init(params):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros,
                                      nu=jax.tree_util.tree_map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        del params
        mu = jax.tree_util.tree_map(lambda m, g: recipe.beta1 * m + (1 - recipe.beta1) * g,
                                    state.mu, grads)
        nu = jax.tree_util.tree_map(lambda v, g: recipe.beta2 * v + (1 - recipe.beta2) * g * g,
                                    state.nu, grads)
        updates = jax.tree_util.tree_map(lambda m, v: m / (jnp.sqrt(v) + recipe.eps), mu, nu)
        return updates, optax.ScaleByAdamState(optax.safe_int32_increment(state.count), mu, nu)

    return optax.GradientTransformation(init, update)


def adam_eps_inside_root(recipe: TrainingRecipe):
    """Adam with eps under the square root (optax's eps_root) instead of added after it."""
    import optax

    return optax.scale_by_adam(b1=recipe.beta1, b2=recipe.beta2, eps=0.0, eps_root=recipe.eps)


def scale_one_gradient(grads: dict, path: tuple[str, ...], factor: float) -> dict:
    """The gradient tree with the tensor at `path` multiplied by factor."""
    def walk(tree, at):
        if not at:
            return tree * factor
        return {k: walk(v, at[1:]) if k == at[0] else v for k, v in tree.items()}

    return walk(grads, path)


# ---- the catalogue -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrainingDefect:
    name: str
    summary: str
    shows_in: tuple[str, ...]                    # the checks that must fail
    recipe: tuple[tuple[str, float], ...] = ()   # JAX side's recipe fields, changed
    lr_scale: float = 1.0                        # JAX side's rates, all multiplied
    schedule_shift: int = 0                      # JAX side's rate changes this many steps early
    optimizer: Callable | None = None            # port.trainer.StepHooks.optimizer
    gradients: Callable | None = None            # port.trainer.StepHooks.gradients

    def jax_recipe(self, recipe: TrainingRecipe) -> TrainingRecipe:
        return dataclasses.replace(recipe, **dict(self.recipe))

    def jax_rates(self, rates: list[float]) -> list[float]:
        n = len(rates)
        return [rates[min(i + self.schedule_shift, n - 1)] * self.lr_scale for i in range(n)]

    @property
    def rates_only(self) -> bool:
        """True when the defect changes nothing but the JAX side's rates, which the step
        takes as an argument: its run can use the correct run's compiled step."""
        return not (self.recipe or self.optimizer or self.gradients)

    def step_hooks(self):
        from port.trainer import StepHooks

        return StepHooks(optimizer=self.optimizer, gradients=self.gradients)

    def applicable(self, rates: list[float]) -> str:
        """'' when the defect changes this run, else why not."""
        if self.schedule_shift and self.jax_rates([*rates]) == [*rates]:
            return "the run's rate never changes, so a shifted schedule is the same schedule"
        return ""


DEFECTS: dict[str, TrainingDefect] = {d.name: d for d in [
    TrainingDefect("tv-dropped", "loss without its TV term (1 - SSIM only)", (FIRST_LOSS,),
                   recipe=(("tv_weight", 0.0),)),
    TrainingDefect("tv-doubled", "TV term weighted 0.002 instead of 0.001", (FIRST_LOSS,),
                   recipe=(("tv_weight", 0.002),)),
    TrainingDefect("adam-eps-1e-7", "Adam eps 1e-7 (Keras' default) instead of 1e-8",
                   (UPDATES,), recipe=(("eps", 1e-7),)),
    TrainingDefect("adam-eps-in-root", "Adam eps under the square root (optax's eps_root)",
                   (UPDATES,), optimizer=adam_eps_inside_root),
    TrainingDefect("adam-beta1-0.95", "Adam beta1 0.95 instead of 0.9",
                   (UPDATES, MOMENTS, LOSSES), recipe=(("beta1", 0.95),)),
    TrainingDefect("adam-beta2-0.99", "Adam beta2 0.99 instead of 0.999",
                   (UPDATES, MOMENTS, LOSSES), recipe=(("beta2", 0.99),)),
    TrainingDefect("adam-beta2-0.9999", "Adam beta2 0.9999 instead of 0.999 (in 20 steps the "
                   "bias-corrected moment barely changes; the stored moment does)", (MOMENTS,),
                   recipe=(("beta2", 0.9999),)),
    TrainingDefect("adam-no-bias-correction", "Adam's moments without bias correction",
                   (UPDATES, MOMENTS, LOSSES), optimizer=adam_without_bias_correction),
    TrainingDefect("lr-plus-1pct", "learning rate 1% too high", (UPDATES, LOSSES),
                   lr_scale=1.01),
    TrainingDefect("schedule-one-step-early", "the rate decays one step early",
                   (UPDATES, LOSSES), schedule_shift=1),
    TrainingDefect("grad-scaled-x2", "feat1's kernel gradients doubled (Adam's update is "
                   "blind to it, its moments are not)", (MOMENTS,),
                   gradients=functools.partial(scale_one_gradient, path=SCALED_TENSOR,
                                               factor=2.0)),
]}


def status_of(defect: TrainingDefect, result, correct=None) -> tuple[str, str]:
    """(status, note) of one defect's training parity result (module docstring). A check
    the correct run (`correct`, on the same trajectory) fails too is no evidence: only
    checks that the correct trainer passes can catch a defect."""
    baseline = set(correct.failed_checks()) if correct is not None else set()
    failing = [check for check in result.failed_checks() if check not in baseline]
    if not failing:
        name, value, limit = result.closest_to_failing()
        return BELOW, (f"passes: closest {name} {value:.2e} <= {limit:.0e}" if not baseline
                       else "fails only where the correct trainer fails too: "
                       + ", ".join(sorted(baseline)))
    if set(failing) & set(defect.shows_in):
        return CAUGHT, "fails: " + ", ".join(failing)
    return MISSED, (f"fails only in {', '.join(failing)}; expected "
                    f"{' or '.join(defect.shows_in)}")
