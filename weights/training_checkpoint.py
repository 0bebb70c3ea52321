"""What a training run is at one step, and how it is saved and resumed.

Framework-neutral: weights and both Adam moments are held as flat dicts under the
Flax names and layouts (`feat1.conv.kernel` HWIO, ...), the layout of the
safetensors files `dln convert` writes; the PyTorch trainer converts with the
layout rules of weights/spec.py. So one checkpoint format serves both trainers.

Files in the output folder:
- weights.safetensors: the weights, in the `dln-flax-params` format every `dln`
  command reads (`dln enhance --weights`), plus the training step in its metadata;
- optimizer.safetensors: Adam's first and second moments (`mu/<name>`, `nu/<name>`),
  the step, the network config and the run's settings.
The optimizer file is written first and the weights last, each atomically; resuming
checks that both hold the same step.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from core.config import DLNConfig
from weights.errors import CheckpointError
from weights.spec import flax_to_torch_array, tensor_specs, torch_to_flax_array

WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_FORMAT = "dln-adam-state"
OPTIMIZER_FORMAT_VERSION = "1"


@dataclasses.dataclass
class TrainState:
    """Weights and Adam moments (flat Flax names and layouts) after `count` steps."""

    params: dict[str, np.ndarray]
    mu: dict[str, np.ndarray] | None = None
    nu: dict[str, np.ndarray] | None = None
    count: int = 0


def flax_to_torch_state(flat: dict[str, np.ndarray], config: DLNConfig) -> dict[str, np.ndarray]:
    """Flat Flax-named arrays -> torch-named arrays in torch layouts (exact)."""
    return {s.torch_name: flax_to_torch_array(s.kind, np.asarray(flat[s.flax_name], np.float32))
            for s in tensor_specs(config)}


def torch_to_flax_state(state: dict[str, np.ndarray], config: DLNConfig) -> dict[str, np.ndarray]:
    """Torch-named arrays -> flat Flax-named arrays in Flax layouts (exact)."""
    return {s.flax_name: torch_to_flax_array(s.kind, np.asarray(state[s.torch_name], np.float32))
            for s in tensor_specs(config)}


def tree_to_flat(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(tree_to_flat(value, name + "."))
        else:
            flat[name] = np.asarray(value, np.float32)
    return flat


def save_state(out_dir: str | Path, config: DLNConfig, state: TrainState, settings_json: str
               ) -> Path:
    """Write optimizer.safetensors, then weights.safetensors; returns the weights path."""
    from weights.convert import checkpoint_from_torch_state, safetensors_metadata
    from weights.files import save_safetensors

    out = Path(out_dir)
    if state.mu is not None and state.nu is not None:
        arrays = {f"mu/{k}": v for k, v in state.mu.items()}
        arrays.update({f"nu/{k}": v for k, v in state.nu.items()})
        save_safetensors(arrays, out / OPTIMIZER_FILE, {
            "format": OPTIMIZER_FORMAT, "format_version": OPTIMIZER_FORMAT_VERSION,
            "step": str(state.count), "config": config.to_json(), "settings": settings_json,
            "layout": "Adam moments under the Flax names and layouts of weights.safetensors"})
    ckpt = checkpoint_from_torch_state(flax_to_torch_state(state.params, config), config)
    metadata = safetensors_metadata(ckpt)
    metadata.update({"train_step": str(state.count), "train_settings": settings_json})
    save_safetensors(ckpt.flax_params, out / WEIGHTS_FILE, metadata)
    return out / WEIGHTS_FILE


def load_state(out_dir: str | Path) -> tuple[DLNConfig, TrainState, dict]:
    """(config, state, stored settings) of the run saved in out_dir, for --resume."""
    from weights.convert import load_checkpoint
    from weights.files import load_safetensors, read_safetensors_metadata

    out = Path(out_dir)
    weights_path, optimizer_path = out / WEIGHTS_FILE, out / OPTIMIZER_FILE
    for path in (weights_path, optimizer_path):
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; nothing to resume in {out}")
    ckpt = load_checkpoint(weights_path)
    weights_meta = read_safetensors_metadata(weights_path)
    arrays, meta = load_safetensors(optimizer_path)
    if (meta.get("format"), meta.get("format_version")) != (OPTIMIZER_FORMAT,
                                                            OPTIMIZER_FORMAT_VERSION):
        raise CheckpointError(f"{optimizer_path}: not a {OPTIMIZER_FORMAT} file")
    if weights_meta.get("train_step") != meta.get("step"):
        raise CheckpointError(
            f"{out}: weights are from step {weights_meta.get('train_step')} but the optimizer "
            f"state from step {meta.get('step')} (an interrupted save?)")
    names = set(ckpt.flax_params)
    mu = {k[3:]: v for k, v in arrays.items() if k.startswith("mu/")}
    nu = {k[3:]: v for k, v in arrays.items() if k.startswith("nu/")}
    if set(mu) != names or set(nu) != names:
        raise CheckpointError(f"{optimizer_path}: moments do not match the weights' tensors")
    for name in names:
        if mu[name].shape != ckpt.flax_params[name].shape or nu[name].shape != mu[name].shape:
            raise CheckpointError(f"{optimizer_path}: moment {name!r} has the wrong shape")
    try:
        settings = json.loads(meta["settings"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{optimizer_path}: stored settings are unreadable") from None
    return ckpt.config, TrainState(dict(ckpt.flax_params), mu, nu, int(meta["step"])), settings
