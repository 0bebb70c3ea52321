"""The settings of a training run: their ranges, what may change on resume, and where
the run goes.

`TrainSettings` holds what `dln train` was asked (its defaults are the authors' recipe,
core.recipe.AUTHORS_RECIPE; --variant is parsed once into `overrides`). `check()` refuses
impossible values with one line; `check_resumable` compares a stored run's settings
with today's, the variant as the network it gives (`dim=16,brightness=on` and
`brightness=on,dim=16` are one network); `stored_settings_usable` tells damaged stored
settings (the step then counts as damaged, and --resume falls back to an older one)
from settings that merely differ; `check_output_folder` refuses an --out that cannot
hold a run before any work.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path

from core.config import DLNConfig, parse_variant
from core.errors import UserError
from core.recipe import AUTHORS_RECIPE, LR_DECAYS, TrainingRecipe
from dln.arguments import MAX_INT as MAX_COUNT, SEED_LIMIT
from parity.trainers import FRAMEWORKS

PRECISIONS = ("highest", "default")
# Settings that determine the trajectory: a resumed run must match the stored ones
# (the variant is compared as the network it gives, not as text: check_resumable).
TRAJECTORY_FIELDS = ("framework", "data", "init", "batch", "patch", "lr", "lr_decay", "beta1",
                     "beta2", "eps", "tv_weight", "seed", "variant", "zero_last_conv",
                     "precision", "devices", "ema")
# Range limits of the numeric settings (`dln train` checks them in argparse too).
MAX_BATCH = 4096           # crops per step: 4096 x 128^2 is already ~200 GB of activations
MAX_PATCH = 4096           # a crop side; larger than any training image here
MAX_WORKERS = 64           # batch-making processes
MAX_DEVICES = 4096

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
    batch: int = AUTHORS_RECIPE.batch
    patch: int = AUTHORS_RECIPE.patch
    lr: float = AUTHORS_RECIPE.lr
    lr_decay: str = AUTHORS_RECIPE.lr_decay
    beta1: float = AUTHORS_RECIPE.beta1
    beta2: float = AUTHORS_RECIPE.beta2
    eps: float = AUTHORS_RECIPE.eps
    tv_weight: float = AUTHORS_RECIPE.tv_weight
    seed: int = AUTHORS_RECIPE.seed
    variant: str | None = None
    zero_last_conv: bool = False
    ema: float = AUTHORS_RECIPE.ema_decay  # weight average decay; 0: none
    heldout: str = "auto"
    eval_every: int = 0
    save_every: int = 1000
    log_every: int = 10
    workers: int = -1  # batch-making processes; -1 = auto (core.data.auto_processes)
    precision: str = "highest"
    devices: int = 0  # JAX data parallel: 0 = every local device
    resume: bool = False
    # --variant parsed once (core.config.parse_variant): the switches it names
    overrides: dict = dataclasses.field(init=False, repr=False, compare=False,
                                        default_factory=dict)

    def __post_init__(self) -> None:
        self.overrides = parse_variant(self.variant)

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
            if value is not None and not 1 <= value <= MAX_COUNT:
                raise TrainError(f"--{name} must be from 1 to {MAX_COUNT:,}, got {value}")
        if not 1 <= self.batch <= MAX_BATCH:
            raise TrainError(f"--batch must be from 1 to {MAX_BATCH}, got {self.batch}")
        if not 11 <= self.patch <= MAX_PATCH:
            raise TrainError(f"--patch must be from 11 (the SSIM window) to {MAX_PATCH}, "
                             f"got {self.patch}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise TrainError(f"--seed must be from 0 to {SEED_LIMIT - 1:,}, got {self.seed}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainError(f"--lr must be a positive number, got {self.lr}")
        if not (0.0 <= self.ema < 1.0):
            raise TrainError(f"--ema must be 0 (off) or a decay below 1, e.g. 0.995; "
                             f"got {self.ema}")
        if not -1 <= self.workers <= MAX_WORKERS:
            raise TrainError(f"--workers must be from -1 (auto) to {MAX_WORKERS}")
        for name, high in (("eval_every", MAX_COUNT), ("save_every", MAX_COUNT),
                           ("devices", MAX_DEVICES)):
            if not 0 <= getattr(self, name) <= high:
                raise TrainError(f"--{name.replace('_', '-')} must be from 0 to {high:,}")
        if not 1 <= self.log_every <= MAX_COUNT:
            raise TrainError(f"--log-every must be from 1 to {MAX_COUNT:,}")

    def to_json(self) -> str:
        stored = dataclasses.asdict(self)
        del stored["overrides"]  # the variant text is stored; this is parsed from it
        return json.dumps(stored, sort_keys=True)

    def network(self, then: DLNConfig | None = None) -> DLNConfig:
        """The network these settings ask for: --variant's switches over the defaults,
        or, with --init, over `then` (the network of the checkpoint the run started from)."""
        base = then if self.init is not None and then is not None else DLNConfig()
        return base.replace(**self.overrides)

    def recipe(self) -> TrainingRecipe:
        """The authors' recipe with this run's values (epochs: the authors' when unset)."""
        return dataclasses.replace(
            AUTHORS_RECIPE, beta1=self.beta1, beta2=self.beta2, eps=self.eps, lr=self.lr,
            lr_decay=self.lr_decay, batch=self.batch, patch=self.patch, seed=self.seed,
            tv_weight=self.tv_weight, ema_decay=self.ema,
            epochs=self.epochs if self.epochs is not None else AUTHORS_RECIPE.epochs)


def check_resumable(stored: dict, settings: TrainSettings,
                    config_then: DLNConfig | None = None) -> None:
    """Refuse to resume with settings that change the trajectory. The variant is
    compared as the network it asks for (config_then: the network the stored run
    trains), so `dim=16,brightness=on` and `brightness=on,dim=16` are one variant."""
    defaults = TrainSettings(out="")  # a field a run stored before it existed: its default
    then = {k: stored.get(k, getattr(defaults, k)) for k in TRAJECTORY_FIELDS}
    differ = [f"{k} ({then[k]!r:.60} then, {getattr(settings, k)!r} now)"
              for k in TRAJECTORY_FIELDS if k != "variant" and then[k] != getattr(settings, k)]
    try:
        network_then = config_then or TrainSettings(out="", variant=then["variant"]).network()
    except UserError:
        network_then = None
    network_now = settings.network(network_then)
    if network_then is None or network_now != network_then:
        differ.append(f"variant ({then['variant']!r:.60} then, {settings.variant!r} now: "
                      "another network)")
    if differ:
        raise TrainError("cannot resume with different settings: " + "; ".join(differ))


def stored_settings_usable(stored: dict) -> None:
    """CheckpointError (the step counts as damaged) for stored settings that are not the
    settings a run writes: a trajectory field of the wrong type, a variant that no
    longer parses."""
    from weights.errors import CheckpointError

    defaults = TrainSettings(out="")
    for name in TRAJECTORY_FIELDS:
        if name not in stored:
            continue
        value, default = stored[name], getattr(defaults, name)
        kinds = (str, type(None)) if name in ("init", "variant") else \
            (int, float) if isinstance(default, float) else (type(default),)
        if not isinstance(value, kinds) or (isinstance(value, bool) != isinstance(default, bool)
                                            and name not in ("init", "variant")):
            raise CheckpointError(f"stored settings are damaged ({name} is {value!r:.40})")
    try:
        parse_variant(stored.get("variant"))
    except UserError as err:
        raise CheckpointError(f"stored settings are damaged (variant: {err})") from None


def check_output_folder(out: Path) -> None:
    """Refuse, before any work, an --out that cannot become a folder we can write in:
    an existing file, a path under a file, or a folder where creating a file fails
    (tried for real with a probe file, since permission bits do not bind root and a
    read-only mount or /proc refuses even root)."""
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {out}: is a file, not a folder")
    existing = out
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise TrainError(f"--out {out}: {existing} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".dln-write-probe.", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise TrainError(f"--out {out}: cannot write in {existing} "
                         f"({err.strerror or err})") from None
