"""The training recipe is data, written once (core/recipe.py), and everything that trains reads it."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

from core.recipe import AUTHORS_RECIPE, TrainingRecipe, authors_decay_epochs

REPO = Path(__file__).resolve().parents[2]
# the recipe fields a `dln train` run may set (the rest are fixed parts of the recipe)
RUN_FIELDS = ("beta1", "beta2", "eps", "lr", "lr_decay", "batch", "patch", "seed", "tv_weight")


def test_the_default_recipe_is_the_authors_training_code():
    # values of the authors' public training script: Adam (0.9, 0.999, 1e-8), lr 1e-5,
    # batch 32, 128 x 128 crops, 500 epochs, seed 123, loss (1 - SSIM) + 0.001 TV,
    # flips and rotation each with p = 0.5
    r = AUTHORS_RECIPE
    assert (r.beta1, r.beta2, r.eps, r.lr) == (0.9, 0.999, 1e-8, 1e-5)
    assert (r.batch, r.patch, r.epochs, r.seed) == (32, 128, 500, 123)
    assert (r.tv_weight, r.flip_probability, r.lr_decay, r.lr_decay_factor) == \
        (0.001, 0.5, "authors", 10.0)


def test_the_recipe_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        AUTHORS_RECIPE.lr = 1e-4  # type: ignore[misc]


def test_the_authors_decay_is_a_float_test_that_never_fires_at_500_epochs():
    assert AUTHORS_RECIPE.decay_after_epochs(500) == ()
    assert AUTHORS_RECIPE.decay_after_epochs(300) == authors_decay_epochs(300) == (199,)
    assert dataclasses.replace(AUTHORS_RECIPE, lr_decay="none").decay_after_epochs(300) == ()
    with pytest.raises(ValueError, match="lr decay"):
        dataclasses.replace(AUTHORS_RECIPE, lr_decay="cosine").decay_after_epochs(3)


def test_training_settings_default_to_the_recipe_and_hand_it_back():
    from dln.training_settings import TRAJECTORY_FIELDS, TrainSettings

    settings = TrainSettings(out="unused")
    for name in RUN_FIELDS:
        assert getattr(settings, name) == getattr(AUTHORS_RECIPE, name), name
        assert name in TRAJECTORY_FIELDS, f"{name} changes the trajectory: resume must check it"
    assert settings.recipe() == AUTHORS_RECIPE
    changed = TrainSettings(out="unused", lr=3e-4, batch=4, epochs=7, seed=9).recipe()
    assert (changed.lr, changed.batch, changed.epochs, changed.seed) == (3e-4, 4, 7, 9)
    assert changed.beta2 == AUTHORS_RECIPE.beta2


def test_dln_train_defaults_and_help_come_from_the_recipe():
    from dln.cli import build_parser

    args = build_parser().parse_args(["train", "--out", "unused"])
    for name in ("batch", "patch", "lr", "lr_decay", "seed"):
        assert getattr(args, name) == getattr(AUTHORS_RECIPE, name), name
    changed = dataclasses.replace(AUTHORS_RECIPE, tv_weight=0.25, batch=5)
    assert "0.25 TV" in changed.describe() and "batch 5" in changed.describe()
    assert AUTHORS_RECIPE.describe() in _train_description(build_parser())


def _train_description(parser) -> str:
    sub = next(a for a in parser._actions if a.dest == "command")
    return " ".join(sub.choices["train"].description.split())


def test_both_trainers_and_both_losses_default_to_the_recipe():
    from port.losses import TV_WEIGHT as port_tv
    from port.trainer import JaxTrainer
    from reference_torch.losses import TV_WEIGHT as torch_tv
    from reference_torch.trainer import TorchTrainer

    for trainer in (JaxTrainer, TorchTrainer):
        default = inspect.signature(trainer).parameters["recipe"].default
        assert default is AUTHORS_RECIPE, trainer.__name__
    assert port_tv == torch_tv == AUTHORS_RECIPE.tv_weight


def test_parity_uses_the_recipe_learning_rate_and_adam_settings():
    from parity.grads import gradients, training_parity

    assert inspect.signature(training_parity.training_parity).parameters["lr"].default == \
        AUTHORS_RECIPE.lr
    assert AUTHORS_RECIPE.loss_text() in gradients.AUTHORS_LOSS


def test_the_recipe_values_are_spelled_in_the_recipe_only():
    """Adam's beta2 (0.999) and eps (1e-8 in a trainer) appear as literals nowhere else."""
    found = []
    for top in ("core", "weights", "port", "reference_torch", "parity", "dln"):
        for path in (REPO / top).rglob("*.py"):
            if path.name == "recipe.py" or path.name == "tolerance.py":
                continue  # tolerance.py's 1e-8 is a float64 tolerance, not Adam's eps
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and type(node.value) is float \
                        and node.value in (0.999, 1e-8):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value}")
    assert not found, found


def test_a_recipe_is_hashable_so_compiled_steps_can_be_cached_by_it():
    assert hash(TrainingRecipe()) == hash(AUTHORS_RECIPE)
    assert TrainingRecipe(lr=2e-5) != AUTHORS_RECIPE


def test_authors_decay_epochs_equal_their_float_test_and_need_no_loop_over_epochs():
    from core.recipe import authors_decay_epochs

    def by_their_loop(total: int) -> tuple[int, ...]:
        period = total * 2 / 3
        return tuple(e for e in range(total) if (e + 1) % period == 0)

    assert all(authors_decay_epochs(t) == by_their_loop(t) for t in range(0, 3001))
    # a loop over 10**21 epochs would never end; the arithmetic answers at once, and for
    # such a total 2/3 of it is a whole float, so the float test fires once
    (epoch,) = authors_decay_epochs(10**21)
    assert (epoch + 1) % (10**21 * 2 / 3) == 0 and epoch < 10**21
