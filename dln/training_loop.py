"""Training DLN, framework-neutral: the authors' schedule, resuming, and the one loop.

The loop is shared by both frameworks; a framework only supplies a trainer with
`step(low, high, lr) -> loss`, `loss_value(loss) -> float`, `weights() -> flat arrays`,
`export() -> TrainingCheckpoint`, `enhancer(weights=None) -> (HWC image -> HWC output)`
and `describe() -> str` (port/trainer.py, reference_torch/trainer.py). Batches are a
pure function of (seed, step) (core/data.py), so a resumed run repeats exactly what an
uninterrupted run would have done.

The recipe (Adam settings, learning rate and its decay, batch, patch, epochs, seed,
loss weight) is core.recipe.AUTHORS_RECIPE; TrainSettings' defaults are its values and
`TrainSettings.recipe()` hands the run's values to the trainer (dln/training_settings.py).
One run per output folder at a time (a flock on OUT/.dln.lock); --resume starts from the
newest step folder whose weights, optimizer state and settings all read back. The learning-rate
schedule is the authors' float test (core.recipe.authors_decay_epochs: never fires
with their default 500 epochs). Their loop runs epochs 0..nEpochs, one more than
asked; here `--epochs N` runs N epochs. With `--steps S` the epoch count is
ceil(S / steps_per_epoch).

With `--ema D` the loop also keeps an exponential moving average of the weights, in
numpy after every step (core.recipe: d_t = min(D, 1 - 1/t)), so both frameworks
average with the same arithmetic; held-out checks and OUT/weights.safetensors are
then the average's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from core.config import DLNConfig
from core.recipe import AUTHORS_RECIPE
from dln.training_settings import (TrainError, TrainSettings, check_output_folder,
                                   check_resumable, stored_settings_usable)
from core.state_files import LOCK_FILE, folder_lock
from core.text import escape_text
from dln.training_log import JSON_FILE, TrainLog
from weights.training_checkpoint import TrainingCheckpoint, holds_a_run

LOG_WRITE_SECONDS = 30.0  # log.csv / log.json are rewritten at most this often mid-run


# ---- the authors' learning-rate schedule ---------------------------------------------
@dataclasses.dataclass(frozen=True)
class Schedule:
    base_lr: float
    steps_per_epoch: int
    total_steps: int
    total_epochs: int
    decay_after_epochs: tuple[int, ...]
    decay_factor: float = AUTHORS_RECIPE.lr_decay_factor

    def epoch(self, step: int) -> int:
        return step // self.steps_per_epoch

    def lr(self, step: int) -> float:
        """The rate for the step with 0-based index `step`."""
        rate = self.base_lr
        for epoch in self.decay_after_epochs:
            if epoch < self.epoch(step):
                rate /= self.decay_factor  # the authors divide the group's rate in place
        return rate


def make_schedule(settings: TrainSettings, steps_per_epoch: int) -> Schedule:
    if settings.steps is not None:
        total_steps = settings.steps
        total_epochs = math.ceil(total_steps / steps_per_epoch)
    else:
        total_epochs = settings.epochs if settings.epochs is not None else AUTHORS_RECIPE.epochs
        total_steps = total_epochs * steps_per_epoch
    recipe = settings.recipe()
    return Schedule(recipe.lr, steps_per_epoch, total_steps, total_epochs,
                    recipe.decay_after_epochs(total_epochs), recipe.lr_decay_factor)


# ---- initial weights ------------------------------------------------------------------
def initial_state(settings: TrainSettings) -> tuple[DLNConfig, TrainingCheckpoint]:
    """From --init (either format, --variant merged) or the authors' initialisation."""
    from weights.initial import authors_initial_state, zero_last
    from weights.training_checkpoint import torch_to_flax_state

    overrides = settings.overrides
    if settings.init:
        from weights.convert import load_checkpoint

        ckpt = load_checkpoint(settings.init, overrides)
        config, state = ckpt.config, dict(ckpt.torch_state)
        if settings.zero_last_conv:
            zero_last(state)
    else:
        config = DLNConfig(**overrides)
        state = authors_initial_state(config, settings.seed, settings.zero_last_conv)
    return config, TrainingCheckpoint(torch_to_flax_state(state, config))


def make_trainer(settings: TrainSettings, config: DLNConfig, state: TrainingCheckpoint):
    """The settings' framework's trainer (frameworks.trainers), with the run's recipe."""
    from frameworks.trainers import make_trainer as trainer_for

    return trainer_for(settings.framework, config, state, settings.recipe(),
                       precision=settings.precision, devices=settings.devices or None)


# ---- the loop ---------------------------------------------------------------------------
def update_average(average: dict[str, np.ndarray] | None, weights: dict[str, np.ndarray],
                   decay: float) -> dict[str, np.ndarray]:
    """One step of the weight average, in float32 numpy: a + (1 - decay) (w - a); the
    first step (average None) starts it at the weights."""
    if average is None:
        return {k: np.array(v, np.float32) for k, v in weights.items()}
    rate = np.float32(1.0 - decay)
    for name, value in weights.items():
        average[name] += rate * (np.asarray(value, np.float32) - average[name])
    return average


@dataclasses.dataclass
class TrainResult:
    out: Path
    weights: Path
    steps: int
    final_loss: float
    seconds: float
    heldout: object | None  # dln.heldout.HeldoutResult
    log: TrainLog


def train(settings: TrainSettings, echo: Callable[[str], None] | None = None,
          data=None) -> TrainResult:
    """Run (or resume) training as `settings` say; write weights, logs and the plot.
    One run per folder at a time: a second one is refused by the folder's lock."""
    echo = echo or (lambda line: print(line, file=sys.stderr))
    settings.check()
    out = Path(settings.out)
    check_output_folder(out)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with folder_lock(out, "another dln train"):
            return _train_locked(settings, out, echo, data)
    except BaseException:
        if created:  # nothing of this run's is worth keeping in a folder it made
            with contextlib.suppress(OSError):
                (out / LOCK_FILE).unlink()
                out.rmdir()  # only if empty
        raise


def resume_point(out: Path, settings: TrainSettings
                 ) -> tuple[DLNConfig, TrainingCheckpoint, TrainLog]:
    """The newest complete step of the run in `out` whose weights, optimizer state and
    stored settings all read back (an older step when a newer one is damaged), checked
    against `settings`, and the run's log up to that step: OUT/log.json, or, when that
    is damaged, the copy inside the step folder. One line (a UserError) when no step
    is usable, when the settings differ, or when neither log can be read."""
    from dln.training_log import LogDamaged
    from weights.training_checkpoint import load_state

    config, state, stored = load_state(out, accept=stored_settings_usable)
    check_resumable(stored, settings, config)
    try:
        return config, state, TrainLog.read(out, state.count)
    except LogDamaged as damaged:
        copy = state.folder / JSON_FILE if state.folder is not None else None
        if copy is None or not copy.is_file():
            raise LogDamaged(f"{damaged}; no copy in the step folder either: move it away to "
                             "resume without the earlier rows") from None
        return config, state, TrainLog.read_file(copy, state.count)  # damaged too: one line


def _train_locked(settings: TrainSettings, out: Path, echo: Callable[[str], None],
                  data) -> TrainResult:
    from core.data import BatchStream, auto_processes, open_training_data
    from core.memory import available_memory
    from frameworks.memory_plan import check_training_memory
    from dln.heldout import evaluate_heldout
    from core.progress import progress
    from weights.training_checkpoint import save_state

    log = TrainLog()
    if settings.resume:
        config, state, log = resume_point(out, settings)
    elif holds_a_run(out):
        raise TrainError(f"{out} already holds a training run; add --resume to continue it, "
                         "or choose another --out")
    else:
        config, state = initial_state(settings)
    check_training_memory(settings.batch, settings.patch, config, settings.framework,
                          available_memory())
    data = data or open_training_data(settings.data, settings.patch, settings.heldout)
    for line in data.problems:
        echo(f"skipped: {escape_text(line)}")
    processes = settings.workers if settings.workers >= 0 else auto_processes()
    stream = BatchStream(data.source, settings.batch, settings.patch, settings.seed,
                         processes=processes)
    schedule = make_schedule(settings, stream.steps_per_epoch)
    trainer = make_trainer(settings, config, state)
    echo(f"data: {data.description}; {schedule.steps_per_epoch} step(s) per epoch")
    echo(f"{trainer.describe()}; {schedule.total_steps} steps, lr {settings.lr:g}"
         + (f", /10 after epoch(s) {list(schedule.decay_after_epochs)}"
            if schedule.decay_after_epochs else ", no decay")
         + (f", weights averaged (EMA {settings.ema:g})" if settings.ema else ""))
    recipe = settings.recipe()
    average = None  # the weight average (--ema), resumed from the checkpoint if kept
    if settings.ema and state.average is not None:
        average = {k: np.array(v, np.float32) for k, v in state.average.items()}
    header = {"title": f"dln train --framework {settings.framework}",
              "settings": json.loads(settings.to_json()), "config": json.loads(config.to_json()),
              "data": data.description, "total_steps": schedule.total_steps,
              "decay_after_epochs": list(schedule.decay_after_epochs)}

    def evaluate(step: int):
        if not data.heldout:
            return None
        result = evaluate_heldout(trainer.enhancer(average), data.heldout)
        log.add_eval(step, result)
        echo(f"step {step}: {result.text()}")
        return result

    def snapshot():
        exported = trainer.export()
        exported.average = average
        return exported

    def save() -> Path:
        header["summary"] = {"steps_done": done}
        path = save_state(out, config, snapshot(), settings.to_json(),
                          {JSON_FILE: log.json_text(header)})
        log.write(out, header)
        return path

    done = state.count
    started = time.perf_counter()
    elapsed_before = log.rows[-1]["elapsed_s"] if log.rows else 0.0
    pending: list[tuple[int, float, object]] = []
    last_write = [started]
    bar = progress(stream.iterate(done, schedule.total_steps), desc=f"train {settings.framework}",
                   unit="step", total=max(0, schedule.total_steps - done))

    def flush() -> None:
        elapsed = elapsed_before + time.perf_counter() - started
        for step, lr, loss in pending:
            value = trainer.loss_value(loss)
            if not math.isfinite(value):
                raise TrainError(f"the loss became {value} at step {step + 1}; "
                                 "try a lower --lr or --zero-last-conv")
            log.add_step(step + 1, schedule.epoch(step), lr, value, elapsed)
        pending.clear()
        if time.perf_counter() - last_write[0] > LOG_WRITE_SECONDS:
            log.write(out, header, plot=False)
            last_write[0] = time.perf_counter()
        if log.rows:
            bar.set_postfix(loss=f"{log.rows[-1]['loss']:.4f}", refresh=False)

    try:
        for step, low, high in bar:
            lr = schedule.lr(step)
            pending.append((step, lr, trainer.step(low, high, lr)))
            done = step + 1
            if settings.ema:
                average = update_average(average, trainer.weights(), recipe.average_decay(done))
            if len(pending) >= settings.log_every:
                flush()
            if done < schedule.total_steps:
                if settings.eval_every and done % settings.eval_every == 0:
                    flush()
                    evaluate(done)
                if settings.save_every and done % settings.save_every == 0:
                    flush()
                    save()
        flush()
    finally:
        bar.close()
        stream.close()
    seconds = time.perf_counter() - started
    heldout = evaluate(done)
    header["summary"] = {"steps_done": done, "seconds_this_run": round(seconds, 2),
                         "final_loss": log.rows[-1]["loss"] if log.rows else None,
                         "heldout": heldout.as_dict() if heldout else None}
    weights = save_state(out, config, snapshot(), settings.to_json(),
                         {JSON_FILE: log.json_text(header)})
    log.write(out, header)
    final = log.rows[-1]["loss"] if log.rows else float("nan")
    return TrainResult(out, weights, done, final, seconds, heldout, log)
