"""Training DLN, framework-neutral: settings, the authors' schedule, and the one loop.

The loop is shared by both frameworks; a framework only supplies a trainer with
`step(low, high, lr) -> loss`, `loss_value(loss) -> float`, `export() -> TrainState`,
`enhancer() -> (HWC image -> HWC output)` and `describe() -> str` (port/trainer.py,
reference_torch/trainer.py). Batches are a pure function of (seed, step) (core/data.py),
so a resumed run repeats exactly what an uninterrupted run would have done.

The learning-rate schedule is the authors': after epoch e (counted from 0) the rate
is divided by 10 when `(e + 1) % (epochs * 2 / 3) == 0`, a FLOAT test, so it only
fires when 2/3 of the epoch count is a whole number (never with their default 500
epochs). Their loop runs epochs 0..nEpochs, one more than asked; here `--epochs N`
runs N epochs. With `--steps S` the epoch count is ceil(S / steps_per_epoch).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

from core.errors import UserError
from core.config import DLNConfig, parse_variant
from dln.training_log import TrainLog
from weights.training_checkpoint import OPTIMIZER_FILE, WEIGHTS_FILE, TrainState

FRAMEWORKS = ("jax", "torch")
LR_DECAYS = ("authors", "none")
PRECISIONS = ("highest", "default")
# Settings that determine the trajectory: a resumed run must match the stored ones.
TRAJECTORY_FIELDS = ("framework", "data", "init", "batch", "patch", "lr", "lr_decay", "beta1",
                     "beta2", "eps", "tv_weight", "seed", "variant", "zero_last_conv",
                     "precision", "devices")
AUTHORS_EPOCHS = 500
LOG_WRITE_SECONDS = 30.0  # log.csv / log.json are rewritten at most this often mid-run


class TrainError(UserError):
    """Settings or a run state that cannot train; one line for the user."""


@dataclasses.dataclass
class TrainSettings:
    out: str
    framework: str = "jax"
    data: str = "builtin"
    init: str | None = None
    epochs: int | None = None
    steps: int | None = None
    batch: int = 32
    patch: int = 128
    lr: float = 1e-5
    lr_decay: str = "authors"
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    tv_weight: float = 0.001
    seed: int = 123
    variant: str | None = None
    zero_last_conv: bool = False
    heldout: str = "auto"
    eval_every: int = 0
    save_every: int = 1000
    log_every: int = 10
    workers: int = -1  # batch-making processes; -1 = auto (core.data.auto_processes)
    precision: str = "highest"
    devices: int = 0  # JAX data parallel: 0 = every local device
    resume: bool = False

    def check(self) -> None:
        if self.framework not in FRAMEWORKS:
            raise TrainError(f"framework must be one of {', '.join(FRAMEWORKS)}")
        if self.lr_decay not in LR_DECAYS:
            raise TrainError(f"lr decay must be one of {', '.join(LR_DECAYS)}")
        if self.precision not in PRECISIONS:
            raise TrainError(f"precision must be one of {', '.join(PRECISIONS)}")
        if self.epochs is not None and self.steps is not None:
            raise TrainError("give --epochs or --steps, not both")
        for name in ("epochs", "steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TrainError(f"--{name} must be at least 1, got {value}")
        if self.batch < 1:
            raise TrainError(f"--batch must be at least 1, got {self.batch}")
        if self.patch < 11:
            raise TrainError(f"--patch must be at least 11 (the SSIM window), got {self.patch}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainError(f"--lr must be a positive number, got {self.lr}")
        if self.workers < -1:
            raise TrainError("--workers must be -1 (auto) or more")
        for name in ("eval_every", "save_every", "devices"):
            if getattr(self, name) < 0:
                raise TrainError(f"--{name.replace('_', '-')} must not be negative")
        if self.log_every < 1:
            raise TrainError("--log-every must be at least 1")
        parse_variant(self.variant)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


# ---- the authors' learning-rate schedule ---------------------------------------------
@dataclasses.dataclass(frozen=True)
class Schedule:
    base_lr: float
    steps_per_epoch: int
    total_steps: int
    total_epochs: int
    decay_after_epochs: tuple[int, ...]

    def epoch(self, step: int) -> int:
        return step // self.steps_per_epoch

    def lr(self, step: int) -> float:
        """The rate for the step with 0-based index `step`."""
        rate = self.base_lr
        for epoch in self.decay_after_epochs:
            if epoch < self.epoch(step):
                rate /= 10.0  # the authors divide the param group's rate in place
        return rate


def authors_decay_epochs(total_epochs: int) -> tuple[int, ...]:
    """Epochs after which the authors divide the rate by 10 (a float test, see above)."""
    period = total_epochs * 2 / 3
    return tuple(e for e in range(total_epochs) if (e + 1) % period == 0)


def make_schedule(settings: TrainSettings, steps_per_epoch: int) -> Schedule:
    if settings.steps is not None:
        total_steps = settings.steps
        total_epochs = math.ceil(total_steps / steps_per_epoch)
    else:
        total_epochs = settings.epochs if settings.epochs is not None else AUTHORS_EPOCHS
        total_steps = total_epochs * steps_per_epoch
    decays = authors_decay_epochs(total_epochs) if settings.lr_decay == "authors" else ()
    return Schedule(settings.lr, steps_per_epoch, total_steps, total_epochs, decays)


# ---- initial weights ------------------------------------------------------------------
def initial_state(settings: TrainSettings) -> tuple[DLNConfig, TrainState]:
    """From --init (either format, --variant merged) or the authors' initialisation."""
    from weights.initial import authors_initial_state, zero_last
    from weights.training_checkpoint import torch_to_flax_state

    overrides = parse_variant(settings.variant)
    if settings.init:
        from weights.convert import load_checkpoint

        ckpt = load_checkpoint(settings.init, overrides)
        config, state = ckpt.config, dict(ckpt.torch_state)
        if settings.zero_last_conv:
            zero_last(state)
    else:
        config = DLNConfig(**overrides)
        state = authors_initial_state(config, settings.seed, settings.zero_last_conv)
    return config, TrainState(torch_to_flax_state(state, config))


def make_trainer(settings: TrainSettings, config: DLNConfig, state: TrainState):
    if settings.framework == "jax":
        from port.trainer import JaxTrainer

        return JaxTrainer(config, state, beta1=settings.beta1, beta2=settings.beta2,
                          eps=settings.eps, tv_weight=settings.tv_weight,
                          precision=settings.precision, devices=settings.devices or None)
    from reference_torch.trainer import TorchTrainer

    return TorchTrainer(config, state, beta1=settings.beta1, beta2=settings.beta2,
                        eps=settings.eps, tv_weight=settings.tv_weight, seed=settings.seed,
                        precision=settings.precision)


# ---- the loop ---------------------------------------------------------------------------
@dataclasses.dataclass
class TrainResult:
    out: Path
    weights: Path
    steps: int
    final_loss: float
    seconds: float
    heldout: object | None  # dln.heldout.HeldoutResult
    log: TrainLog


def check_resumable(stored: dict, settings: TrainSettings) -> None:
    differ = [f"{k} ({stored.get(k)!r} then, {getattr(settings, k)!r} now)"
              for k in TRAJECTORY_FIELDS if stored.get(k) != getattr(settings, k)]
    if differ:
        raise TrainError("cannot resume with different settings: " + "; ".join(differ))


def train(settings: TrainSettings, echo: Callable[[str], None] | None = None,
          data=None) -> TrainResult:
    """Run (or resume) training as `settings` say; write weights, logs and the plot."""
    from core.data import BatchStream, auto_processes, open_training_data
    from dln.heldout import evaluate_heldout
    from core.progress import progress
    from weights.training_checkpoint import load_state, save_state

    echo = echo or (lambda line: print(line, file=sys.stderr))
    settings.check()
    out = Path(settings.out)
    log = TrainLog()
    if settings.resume:
        config, state, stored = load_state(out)
        check_resumable(stored, settings)
        log = TrainLog.read(out, state.count)
    elif (out / WEIGHTS_FILE).exists() or (out / OPTIMIZER_FILE).exists():
        raise TrainError(f"{out} already holds a training run; add --resume to continue it, "
                         "or choose another --out")
    else:
        config, state = initial_state(settings)
    data = data or open_training_data(settings.data, settings.patch, settings.heldout)
    for line in data.problems:
        echo(f"skipped: {line}")
    processes = settings.workers if settings.workers >= 0 else auto_processes()
    stream = BatchStream(data.source, settings.batch, settings.patch, settings.seed,
                         processes=processes)
    schedule = make_schedule(settings, stream.steps_per_epoch)
    out.mkdir(parents=True, exist_ok=True)
    trainer = make_trainer(settings, config, state)
    echo(f"data: {data.description}; {schedule.steps_per_epoch} step(s) per epoch")
    echo(f"{trainer.describe()}; {schedule.total_steps} steps, lr {settings.lr:g}"
         + (f", /10 after epoch(s) {list(schedule.decay_after_epochs)}"
            if schedule.decay_after_epochs else ", no decay"))
    header = {"title": f"dln train --framework {settings.framework}",
              "settings": json.loads(settings.to_json()), "config": json.loads(config.to_json()),
              "data": data.description, "total_steps": schedule.total_steps,
              "decay_after_epochs": list(schedule.decay_after_epochs)}

    def evaluate(step: int):
        if not data.heldout:
            return None
        result = evaluate_heldout(trainer.enhancer(), data.heldout)
        log.add_eval(step, result)
        echo(f"step {step}: {result.text()}")
        return result

    def save() -> Path:
        header["summary"] = {"steps_done": done}
        path = save_state(out, config, trainer.export(), settings.to_json())
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
    weights = save_state(out, config, trainer.export(), settings.to_json())
    log.write(out, header)
    final = log.rows[-1]["loss"] if log.rows else float("nan")
    return TrainResult(out, weights, done, final, seconds, heldout, log)
