"""The authors' training recipe, as data: one frozen dataclass that everything training reads.

`AUTHORS_RECIPE` holds the values of the authors' public training code; the two
per-framework training steps (port/trainer.py, reference_torch/trainer.py), the loop's
settings (dln/training_settings.py), `dln train`'s defaults and help text, the augmentation
(core/data.py) and gradient / training parity (parity/grads) all read it, so each value
is written down once, here:

- Adam with betas (0.9, 0.999) and eps 1e-8, learning rate 1e-5 (the default of their
  learning-rate flag; that flag's help text says 1e-4);
- the rate divided by 10 after each epoch e (counted from 0) for which
  `(e + 1) % (epochs * 2 / 3) == 0`. This is a FLOAT test: it only fires when 2/3 of the
  epoch count is a whole number, so with their default 500 epochs (2/3 of 500 is
  333.33...) the rate never decays. 'none' keeps it constant;
- batches of 32 crops of 128 x 128 pixels, 500 epochs, seed 123;
- loss (1 - SSIM(pred, target)) + 0.001 TV(pred);
- augmentation, the same for both images of a pair: one random crop, then a vertical
  flip, a horizontal mirror and a rotation by 180 degrees, each with probability 0.5.

One addition that the authors' code does not have, off by default: `ema_decay`, an
exponential moving average of the weights kept beside the optimiser's (the model a run
hands out is then the average). After step t (counted from 1) the average moves by
(1 - d_t) towards the weights, d_t = min(ema_decay, 1 - 1/t): a plain running mean of
every step's weights until the mean's horizon reaches 1 / (1 - ema_decay) steps.

Framework-neutral: plain numbers, no framework imported.
"""

from __future__ import annotations

import dataclasses
import math

LR_DECAYS = ("authors", "none")


def short_number(value: float) -> str:
    """0.9 -> '0.9', 1e-05 -> '1e-5': a number as a person writes it in a help text."""
    return f"{value:g}".replace("e-0", "e-").replace("e+0", "e+")


def authors_decay_epochs(total_epochs: int) -> tuple[int, ...]:
    """Epochs (0-based) after which the authors divide the rate by 10: those e in
    [0, total_epochs) with (e + 1) % (total_epochs * 2 / 3) == 0, the float test spelled
    as they spell it, found without visiting every epoch. Python's float remainder
    is exact, so the test holds only where e + 1 is exactly k * period for a whole k;
    the candidates are the whole numbers next to each multiple of the period up to
    total_epochs (one multiple, as 2 * period > total_epochs), each checked with the
    authors' very test."""
    total_epochs = int(total_epochs)
    if total_epochs < 1:
        return ()
    period = total_epochs * 2 / 3
    found = set()
    for k in range(1, int(total_epochs // period) + 1):
        for candidate in (math.floor(k * period), math.ceil(k * period)):
            if 1 <= candidate <= total_epochs and candidate % period == 0:
                found.add(candidate - 1)
    return tuple(sorted(found))


@dataclasses.dataclass(frozen=True)
class TrainingRecipe:
    """How DLN is trained; the defaults are the authors' (module docstring)."""

    beta1: float = 0.9          # Adam's first-moment decay
    beta2: float = 0.999        # Adam's second-moment decay
    eps: float = 1e-8           # added outside the square root, as torch.optim.Adam does
    lr: float = 1e-5
    lr_decay: str = "authors"   # one of LR_DECAYS
    lr_decay_factor: float = 10.0
    batch: int = 32
    patch: int = 128            # square crop side, pixels
    epochs: int = 500
    seed: int = 123
    tv_weight: float = 0.001    # loss = (1 - SSIM) + tv_weight * TV
    flip_probability: float = 0.5  # each of: vertical flip, mirror, 180-degree rotation
    ema_decay: float = 0.0      # weight average (module docstring); 0: none, the authors'

    def decay_after_epochs(self, total_epochs: int) -> tuple[int, ...]:
        """Epochs after which the rate is divided by lr_decay_factor, for a run of
        total_epochs epochs."""
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"lr decay must be one of {', '.join(LR_DECAYS)}, "
                             f"got {self.lr_decay!r}")
        return authors_decay_epochs(total_epochs) if self.lr_decay == "authors" else ()

    def average_decay(self, step: int) -> float:
        """d_t of the weight average after step t (1-based): min(ema_decay, 1 - 1/t)."""
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {self.ema_decay!r}")
        return min(self.ema_decay, 1.0 - 1.0 / max(1, int(step)))

    def adam_text(self) -> str:
        return "Adam " + "/".join(short_number(v) for v in (self.beta1, self.beta2, self.eps))

    def loss_text(self) -> str:
        return f"1 - SSIM + {short_number(self.tv_weight)} TV"

    def decay_text(self) -> str:
        if self.lr_decay == "none":
            return "constant"
        return (f"divided by {short_number(self.lr_decay_factor)} when "
                "(epoch+1) % (2/3 epochs) == 0 (a float test)")

    def describe(self) -> str:
        """One line, e.g. for a help text."""
        return (f"{self.adam_text()}, lr {short_number(self.lr)} {self.decay_text()}, "
                f"batch {self.batch}, patch {self.patch}, {self.epochs} epochs, "
                f"seed {self.seed}, loss {self.loss_text()}, crop + flips + 180-degree rotation "
                f"(p {short_number(self.flip_probability)} each)"
                + (f", weights averaged (EMA {short_number(self.ema_decay)})"
                   if self.ema_decay else ""))


AUTHORS_RECIPE = TrainingRecipe()
