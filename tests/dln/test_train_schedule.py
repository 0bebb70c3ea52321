"""The authors' learning-rate schedule and training settings (no framework needed)."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import ConfigError, DLNConfig
from core.errors import UserError
from weights.initial import authors_initial_state
from core.recipe import authors_decay_epochs
from dln.training_loop import make_schedule
from dln.training_settings import TrainError, TrainSettings, check_resumable


def test_authors_decay_never_fires_with_their_default_500_epochs():
    # 2/3 of 500 is 333.33...: no (epoch + 1) is a float multiple of it
    assert authors_decay_epochs(500) == ()


def test_authors_decay_fires_after_each_epoch_whose_successor_is_a_multiple_of_two_thirds():
    assert authors_decay_epochs(300) == (199,)
    assert authors_decay_epochs(3) == (1,)  # (1 + 1) % 2.0 == 0; epoch 3 is not run
    assert authors_decay_epochs(6) == (3,)
    assert authors_decay_epochs(9) == (5,)  # period 6.0; (11 + 1) would be epoch 11
    assert authors_decay_epochs(10) == ()   # period 6.67


def test_schedule_divides_the_rate_from_the_epoch_after_the_decay():
    settings = TrainSettings(out="unused", epochs=3, lr=1e-4)
    schedule = make_schedule(settings, steps_per_epoch=5)
    assert schedule.total_steps == 15 and schedule.total_epochs == 3
    rates = [schedule.lr(s) for s in range(15)]
    assert rates[:10] == [1e-4] * 10, "the decay after epoch 1 came early"
    assert rates[10:] == [1e-4 / 10.0] * 5
    by_steps = make_schedule(TrainSettings(out="unused", steps=7, lr=1e-3), steps_per_epoch=3)
    assert (by_steps.total_steps, by_steps.total_epochs) == (7, 3)
    assert make_schedule(TrainSettings(out="unused", steps=300, lr_decay="none"), 1).lr(299) == 1e-5
    assert make_schedule(TrainSettings(out="unused"), 1).total_steps == 500  # authors' epochs


def test_settings_refuse_impossible_values_with_one_line():
    for bad in (dict(epochs=2, steps=3), dict(batch=0), dict(patch=8), dict(lr=-1.0),
                dict(framework="tf"), dict(variant="dim=7"), dict(steps=0)):
        # a UserError: the CLI prints it as one line and exits 2 (a bad dim is a ConfigError)
        expected = ConfigError if "variant" in bad else TrainError
        with pytest.raises(expected) as info:
            TrainSettings(out="x", **bad).check()
        assert isinstance(info.value, UserError), bad
        assert "\n" not in str(info.value), bad


def test_resume_is_refused_when_a_trajectory_setting_changed():
    stored = TrainSettings(out="x", steps=10)
    check_resumable(stored.__dict__, TrainSettings(out="x", steps=20))  # longer is fine
    with pytest.raises(TrainError, match="lr"):
        check_resumable(stored.__dict__, TrainSettings(out="x", steps=10, lr=1e-3))


def test_authors_initialisation_statistics_and_zero_last_conv():
    config = DLNConfig(dim=16)
    state = authors_initial_state(config, seed=5)
    feature = state["feature.conv.weight"]  # fan_in 4 * 16 * 9 = 576
    std = float(feature.std())
    assert abs(std - np.sqrt(2 / 576)) < 0.05 * np.sqrt(2 / 576), f"Kaiming std {std}"
    assert not np.any(state["feature.conv.bias"]) and np.all(state["feat1.act.weight"] == 0.25)
    dense = state["feat_out_2.fusion.fc.0.weight"]  # (2, 32): U(-1/sqrt(32), 1/sqrt(32))
    assert np.abs(dense).max() <= 1 / np.sqrt(32)
    zeroed = authors_initial_state(config, seed=5, zero_last_conv=True)
    assert not np.any(zeroed["out.weight"]) and not np.any(zeroed["out.bias"])
    assert np.array_equal(zeroed["feature.conv.weight"], feature)
