"""What a training run is at one step, and how it is saved and resumed.

Framework-neutral: weights and both Adam moments are held as flat dicts under the
Flax names and layouts (`feat1.conv.kernel` HWIO, ...), the layout of the
safetensors files `dln convert` writes; the PyTorch trainer converts with the
layout rules of weights/spec.py. So one checkpoint format serves both trainers.

Files in the output folder:
- checkpoints/step-NNNNNNNN/: one complete training checkpoint, published by ONE
  rename of a folder written in full beforehand (core.atomic_files.atomic_directory):
  weights.safetensors (the weights, in the `dln-flax-params` format every `dln`
  command reads, plus the training step in its metadata) and optimizer.safetensors
  (Adam's first and second moments `mu/<name>`, `nu/<name>`, the step, the network
  config and the run's settings). A run that averages its weights (--ema) keeps the
  average in weights.safetensors, since that is the model the run hands out, and the
  optimiser's own weights as `params/<name>` in optimizer.safetensors. The previous
  step folder is removed only after the new one is published, so a kill, power loss
  or full disk at any moment leaves at least one complete checkpoint; `--resume`
  takes the latest complete one.
- weights.safetensors and optimizer.safetensors beside it: the latest step's files
  again (hard links, each published atomically after its step folder), so that
  `dln enhance --weights OUT/weights.safetensors` always reads a whole file.
A folder without checkpoints/ (runs made before this layout) resumes from the two
files beside it when both hold the same step.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from core.config import DLNConfig
from weights.errors import CheckpointError
from weights.spec import flax_to_torch_array, tensor_specs, torch_to_flax_array

WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
CHECKPOINTS_DIR = "checkpoints"
OPTIMIZER_FORMAT = "dln-adam-state"
OPTIMIZER_FORMAT_VERSION = "1"


@dataclasses.dataclass
class TrainingCheckpoint:
    """Weights and Adam moments (flat Flax names and layouts) after `count` steps, and
    the running average of the weights when the run keeps one."""

    params: dict[str, np.ndarray]
    mu: dict[str, np.ndarray] | None = None
    nu: dict[str, np.ndarray] | None = None
    count: int = 0
    average: dict[str, np.ndarray] | None = None
    folder: Path | None = None  # the step folder it was loaded from (load_state)

    @property
    def model_params(self) -> dict[str, np.ndarray]:
        """The weights the run hands out: the average when there is one."""
        return self.params if self.average is None else self.average


def flax_to_torch_state(flat: dict[str, np.ndarray], config: DLNConfig) -> dict[str, np.ndarray]:
    """Flat Flax-named arrays -> torch-named arrays in torch layouts (exact)."""
    return {s.torch_name: flax_to_torch_array(s.kind, np.asarray(flat[s.flax_name], np.float32))
            for s in tensor_specs(config)}


def torch_to_flax_state(state: dict[str, np.ndarray], config: DLNConfig) -> dict[str, np.ndarray]:
    """Torch-named arrays -> flat Flax-named arrays in Flax layouts (exact)."""
    return {s.flax_name: torch_to_flax_array(s.kind, np.asarray(state[s.torch_name], np.float32))
            for s in tensor_specs(config)}


def step_folder_name(count: int, generation: int = 0) -> str:
    return f"step-{count:08d}" + (f"-{generation}" if generation else "")


def _step_key(path: Path) -> tuple[int, int] | None:
    """(step, generation) of a published step folder's name, None for anything else."""
    match = re.fullmatch(r"step-(\d{8,})(?:-(\d+))?", path.name)
    if match is None or not path.is_dir():
        return None
    return int(match.group(1)), int(match.group(2) or 0)


def step_folders(out_dir: str | Path) -> list[Path]:
    """Published step folders of a run, newest first."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    keyed = [(key, path) for path in root.iterdir() if (key := _step_key(path)) is not None]
    return [path for _, path in sorted(keyed, reverse=True)]


def holds_a_run(out_dir: str | Path) -> bool:
    out = Path(out_dir)
    return any((out / name).exists() for name in (WEIGHTS_FILE, OPTIMIZER_FILE, CHECKPOINTS_DIR))


def _write_pair(folder: Path, config: DLNConfig, state: TrainingCheckpoint,
                settings_json: str, extra_files: dict[str, str]) -> None:
    from weights.convert import checkpoint_from_torch_state, safetensors_metadata
    from weights.files import save_safetensors

    if state.mu is not None and state.nu is not None:
        arrays = {f"mu/{k}": v for k, v in state.mu.items()}
        arrays.update({f"nu/{k}": v for k, v in state.nu.items()})
        if state.average is not None:
            arrays.update({f"params/{k}": v for k, v in state.params.items()})
        save_safetensors(arrays, folder / OPTIMIZER_FILE, {
            "format": OPTIMIZER_FORMAT, "format_version": OPTIMIZER_FORMAT_VERSION,
            "step": str(state.count), "config": config.to_json(), "settings": settings_json,
            "layout": "Adam moments under the Flax names and layouts of weights.safetensors"})
    ckpt = checkpoint_from_torch_state(flax_to_torch_state(state.model_params, config), config)
    metadata = safetensors_metadata(ckpt)
    metadata.update({"train_step": str(state.count), "train_settings": settings_json})
    if state.average is not None:
        metadata["train_weights"] = "exponential moving average of the training weights"
    save_safetensors(ckpt.flax_params, folder / WEIGHTS_FILE, metadata)
    for name, text in extra_files.items():
        (folder / name).write_text(text)  # inside the folder that one rename publishes


def save_state(out_dir: str | Path, config: DLNConfig, state: TrainingCheckpoint,
               settings_json: str, extra_files: dict[str, str] | None = None) -> Path:
    """Publish one complete checkpoint folder, then the latest files beside it; returns
    the path of the run's weights (OUT/weights.safetensors). extra_files {name: text}
    go into the step folder too (the run's log up to this step)."""
    from core.atomic_files import atomic_directory, link_or_copy_atomic

    out = Path(out_dir)
    root = out / CHECKPOINTS_DIR
    older = step_folders(out)
    try:
        root.mkdir(parents=True, exist_ok=True)
        stale = [*root.glob(".step-*.tmp"), *out.glob(f".{WEIGHTS_FILE}.*.tmp"),
                 *out.glob(f".{OPTIMIZER_FILE}.*.tmp")]
        for path in stale:  # temporaries of a save killed before its rename
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        generation = 0
        while (root / step_folder_name(state.count, generation)).exists():
            generation += 1  # the same step saved again: a new name, never a clobber
        step = root / step_folder_name(state.count, generation)
        with atomic_directory(step) as folder:
            _write_pair(folder, config, state, settings_json, extra_files or {})
        for name in (WEIGHTS_FILE, OPTIMIZER_FILE):
            if (step / name).is_file():
                link_or_copy_atomic(step / name, out / name)
        for previous in older:  # only now that a newer complete checkpoint exists
            shutil.rmtree(previous, ignore_errors=True)
    except OSError as err:
        raise CheckpointError(f"{out}: cannot write the training checkpoint "
                              f"({err.strerror or err})") from None
    return out / WEIGHTS_FILE


def load_state(out_dir: str | Path, accept: Callable[[dict], None] | None = None
               ) -> tuple[DLNConfig, TrainingCheckpoint, dict]:
    """(config, state, stored settings) of the latest complete checkpoint in out_dir,
    for --resume: the newest step folder that reads back whole (an older one if a
    newer one is damaged), or the two files of a run made before step folders.
    accept(settings), when given, raises CheckpointError for stored settings that are
    damaged, which makes the folder count as damaged too."""
    out = Path(out_dir)
    folders = step_folders(out) or [out]
    first_error = None
    for folder in folders:
        try:
            config, state, settings = _load_pair(folder, out)
            if accept is not None:
                accept(settings)
        except CheckpointError as err:
            first_error = first_error or err
            continue
        state.folder = folder
        return config, state, settings
    raise first_error


def _load_pair(folder: Path, out: Path) -> tuple[DLNConfig, TrainingCheckpoint, dict]:
    from weights.convert import load_checkpoint
    from weights.files import load_safetensors

    weights_path, optimizer_path = folder / WEIGHTS_FILE, folder / OPTIMIZER_FILE
    for path in (weights_path, optimizer_path):
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; nothing to resume in {out}")
    ckpt = load_checkpoint(weights_path)
    weights_meta = ckpt.metadata  # the header read by that one load, not read again
    arrays, meta = load_safetensors(optimizer_path)
    if (meta.get("format"), meta.get("format_version")) != (OPTIMIZER_FORMAT,
                                                            OPTIMIZER_FORMAT_VERSION):
        raise CheckpointError(f"{optimizer_path}: not a {OPTIMIZER_FORMAT} file")
    if weights_meta.get("train_step") != meta.get("step"):
        raise CheckpointError(
            f"{folder}: weights are from step {weights_meta.get('train_step')} but the optimizer "
            f"state from step {meta.get('step')} (an interrupted save?)")
    names = set(ckpt.flax_params)
    mu = {k[3:]: v for k, v in arrays.items() if k.startswith("mu/")}
    nu = {k[3:]: v for k, v in arrays.items() if k.startswith("nu/")}
    raw = {k[7:]: v for k, v in arrays.items() if k.startswith("params/")}
    if set(mu) != names or set(nu) != names or (raw and set(raw) != names):
        raise CheckpointError(f"{optimizer_path}: moments do not match the weights' tensors")
    for name in names:
        shape = ckpt.flax_params[name].shape
        if any(group[name].shape != shape for group in (mu, nu, raw) if group):
            raise CheckpointError(f"{optimizer_path}: moment {name!r} has the wrong shape")
    try:
        settings = json.loads(meta["settings"])
    except (KeyError, ValueError, RecursionError):
        settings = None
    if not isinstance(settings, dict):
        raise CheckpointError(f"{optimizer_path}: stored settings are unreadable")
    step = meta.get("step", "")
    if not (step.isascii() and step.isdigit() and len(step) < 19):
        raise CheckpointError(f"{optimizer_path}: stored step {step[:20]!r} is not a count")
    if raw:  # an averaging run: weights.safetensors holds the average
        state = TrainingCheckpoint(raw, mu, nu, int(step), dict(ckpt.flax_params))
    else:
        state = TrainingCheckpoint(dict(ckpt.flax_params), mu, nu, int(step))
    return ckpt.config, state, settings
