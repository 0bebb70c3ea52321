"""--resume on a run folder whose state files are damaged, and two runs on one folder:
an older complete step or the step folder's copy of the log is used, else one line;
never a traceback, never a hang. The variant is compared as a network, not as text."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import DLNConfig
from core.state_files import folder_lock
from dln.cli import main
from dln.training_log import JSON_FILE, LogDamaged, TrainLog
from dln.training_loop import resume_point
from dln.training_settings import (TrainError, TrainSettings, check_resumable,
                                   stored_settings_usable)
from weights.errors import CheckpointError
from weights.initial import authors_initial_state
from weights.training_checkpoint import (TrainingCheckpoint, save_state, step_folders,
                                         torch_to_flax_state)

CFG16 = DLNConfig(dim=16)
SETTINGS = dict(variant="dim=16", steps=10, batch=2, patch=24)


def _log(steps: int) -> TrainLog:
    log = TrainLog()
    for step in range(1, steps + 1):
        log.add_step(step, 0, 1e-4, 1.0 / step, 0.1 * step)
    return log


def _run(folder, counts=(4,), settings_json=None, log_copy=True):
    """A run folder as `dln train` leaves it: step folders, weights and log.json."""
    params = torch_to_flax_state(authors_initial_state(CFG16, 0, False), CFG16)
    moments = {k: np.zeros_like(v) for k, v in params.items()}
    settings_json = settings_json or TrainSettings(out=str(folder), **SETTINGS).to_json()
    for count in counts:
        log = _log(count)
        extra = {JSON_FILE: log.json_text({})} if log_copy else None
        save_state(folder, CFG16, TrainingCheckpoint(params, moments, moments, count),
                   settings_json, extra)
        log.write(folder, {}, plot=False)
    return folder


def _settings(folder, **changes) -> TrainSettings:
    return TrainSettings(out=str(folder), resume=True, **{**SETTINGS, **changes})


def test_a_damaged_log_json_is_replaced_by_the_step_folders_copy(tmp_path):
    run = _run(tmp_path / "run")
    (run / JSON_FILE).write_text('{"rows": [{"step": 1,')  # cut short by a full disk
    _, state, log = resume_point(run, _settings(run))
    assert state.count == 4 and [r["step"] for r in log.rows] == [1, 2, 3, 4]


@pytest.mark.parametrize("damage", ["cut short", "wrong types", "a FIFO", "a list"])
def test_a_damaged_log_json_without_a_copy_is_one_line(tmp_path, damage):
    run = _run(tmp_path / "run", log_copy=False)
    path = run / JSON_FILE
    path.unlink()
    if damage == "a FIFO":
        os.mkfifo(path)  # nobody writes into it: reading it must not hang
    else:
        path.write_text({"cut short": '{"rows": [', "a list": "[1, 2]",
                         "wrong types": '{"rows": [{"step": "x", "epoch": 0, "lr": 1, '
                                        '"loss": 1, "elapsed_s": 0}]}'}[damage])
    with pytest.raises(LogDamaged) as info:
        resume_point(run, _settings(run))
    assert "\n" not in str(info.value) and "log.json" in str(info.value)


def test_damaged_stored_settings_fall_back_to_the_previous_complete_step(tmp_path):
    import shutil

    run = _run(tmp_path / "run", counts=(4,))
    (complete,) = step_folders(run)
    newer = complete.parent / "step-00000006"
    shutil.copytree(complete, newer)
    damaged = _run(tmp_path / "other", counts=(6,), settings_json='{"batch": "two"}')
    for name in ("weights.safetensors", "optimizer.safetensors"):
        shutil.copy(step_folders(damaged)[0] / name, newer / name)
    _, state, _ = resume_point(run, _settings(run))
    assert state.count == 4 and state.folder == complete


@pytest.mark.parametrize("stored", ['["not", "an", "object"]', '{"batch": "two"}',
                                    '{"variant": "dim=7"}', '{"seed": true}', "{nope"])
def test_a_run_whose_only_step_has_damaged_settings_is_refused_in_one_line(tmp_path, stored):
    run = _run(tmp_path / "run", settings_json=stored)
    with pytest.raises(CheckpointError) as info:
        resume_point(run, _settings(run))
    assert "\n" not in str(info.value) and "settings" in str(info.value)


def test_the_variant_is_compared_as_the_network_it_gives():
    stored = json.loads(TrainSettings(out="x", variant="dim=16,brightness=on").to_json())
    check_resumable(stored, TrainSettings(out="x", variant="brightness=on,dim=16"), CFG16)
    check_resumable(stored, TrainSettings(out="x", variant="dim=16,gamma=1"), CFG16)
    with pytest.raises(TrainError, match="another network"):
        check_resumable(stored, TrainSettings(out="x", variant="dim=32"), CFG16)
    with pytest.raises(TrainError, match="another network"):
        check_resumable(stored, TrainSettings(out="x"), CFG16)  # the default is dim 64


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() |
                           st.text(max_size=12),
                           lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=8)


@settings(max_examples=150, deadline=None)
@given(stored=st.dictionaries(st.sampled_from(["batch", "lr", "seed", "variant", "init",
                                               "framework", "zero_last_conv", "ema",
                                               "devices", "extra"]), JSON_VALUES, max_size=5))
def test_any_stored_settings_are_usable_or_damaged_and_then_resume_or_differ(stored):
    try:
        stored_settings_usable(stored)
    except CheckpointError as err:
        assert "\n" not in str(err)
        return
    try:
        check_resumable(stored, TrainSettings(out="x"), None)
    except TrainError as err:
        assert "\n" not in str(err)


@settings(max_examples=150, deadline=None)
@given(data=st.one_of(st.binary(max_size=200),
                      JSON_VALUES.map(lambda v: json.dumps({"rows": v}).encode()),
                      st.lists(st.fixed_dictionaries(
                          {"step": JSON_VALUES, "epoch": st.integers(0, 3),
                           "lr": st.floats(), "loss": JSON_VALUES,
                           "elapsed_s": st.floats()}), max_size=3).map(
                          lambda rows: json.dumps({"rows": rows}).encode())))
def test_any_log_json_reads_back_as_a_log_or_is_one_damaged_line(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("log")
    (folder / JSON_FILE).write_bytes(data)
    try:
        log = TrainLog.read(folder, 10)
    except LogDamaged as err:
        assert "\n" not in str(err)
    else:
        assert all(isinstance(r["step"], int) and r["step"] <= 10 for r in log.rows)


def test_a_second_train_on_a_folder_in_use_is_refused_by_its_lock(tmp_path, capsys):
    run = _run(tmp_path / "run")
    with folder_lock(run):  # the first run, still going
        before = sorted(p.name for p in run.rglob("*"))
        code = main(["train", "--variant", "dim=16", "--batch", "2", "--patch", "24",
                     "--steps", "10", "--resume", "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "in use" in err, err
    assert sorted(p.name for p in run.rglob("*")) == before
