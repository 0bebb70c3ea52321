"""Checking a torch-named state dict against the network's table of tensors.

Strict in the manner of the safetensors converter: key sets and every shape are
compared before anything is copied, and differences are listed sorted.
"""

from __future__ import annotations

import numpy as np

from core.config import ConfigError, DLNConfig
from weights.errors import CheckpointError
from weights.spec import tensor_specs

DATAPARALLEL_PREFIX = "module."
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "params")


def strip_dataparallel(keys_to_values: dict) -> dict:
    """Drop DataParallel's `module.` prefix when every key carries it."""
    keys = list(keys_to_values)
    if keys and all(k.startswith(DATAPARALLEL_PREFIX) for k in keys):
        return {k[len(DATAPARALLEL_PREFIX):]: v for k, v in keys_to_values.items()}
    return dict(keys_to_values)


def _shorten(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def require_dln_keys(state: dict) -> None:
    """Refuse, before any tensor is looked at, a state dict of another network.

    Every DLN has `feat1.conv.weight` (after the `module.` prefix is stripped);
    a state dict without it is named by its first keys, so that a ResNet or a
    detector is called what it is rather than failing on a dtype or a shape.
    """
    if "feat1.conv.weight" not in state:
        raise CheckpointError(
            f"not a DLN checkpoint: no feat1.conv.weight among its {len(state)} entries "
            f"(first keys: {_shorten(sorted(map(str, state)), 5) or 'none'})")


def infer_config(state: dict[str, np.ndarray], overrides: dict) -> DLNConfig:
    """The config a torch-named state dict implies, merged with the user's --variant.

    Width and brightness are read from shapes (feat2 has `dim` outputs; feat1 reads
    4 channels with the brightness map, 3 without). gamma and residual_sign leave no
    trace in the weights and come from the overrides or the defaults. An override
    that contradicts the shapes is refused, naming the conflict.
    """
    feat1 = state.get("feat1.conv.weight")
    feat2 = state.get("feat2.conv.weight")
    if feat1 is None or feat2 is None or np.ndim(feat1) != 4 or np.ndim(feat2) != 4:
        raise CheckpointError(
            "not a DLN checkpoint: it has no 4-D feat1.conv.weight / feat2.conv.weight "
            f"(first keys: {_shorten(sorted(state), 5) or 'none'})")
    implied = {"dim": int(feat2.shape[0])}
    in_channels = int(feat1.shape[1])
    if in_channels not in (3, 4):
        raise CheckpointError(
            f"not a DLN checkpoint: feat1 reads {in_channels} channels (expected 4 with the "
            "brightness channel, 3 without)")
    implied["brightness"] = in_channels == 4
    for key, value in implied.items():
        if key in overrides and overrides[key] != value:
            shown = {True: "on", False: "off"}.get(value, value)
            asked = {True: "on", False: "off"}.get(overrides[key], overrides[key])
            raise CheckpointError(
                f"variant conflict: {key}={asked} was requested but the checkpoint's shapes "
                f"imply {key}={shown} (feat1 reads {in_channels} channels, dim {implied['dim']})")
    try:
        return DLNConfig(**{**overrides, **implied})
    except ConfigError as err:
        raise CheckpointError(f"not a usable DLN checkpoint: {err}") from None


def check_against_spec(state: dict[str, np.ndarray], cfg: DLNConfig, naming: str) -> None:
    """Raise CheckpointError listing missing/unexpected keys and shape mismatches.

    naming: "torch" or "flax", which of the two name columns the keys use.
    """
    specs = tensor_specs(cfg)
    expected = {(s.torch_name if naming == "torch" else s.flax_name):
                (s.torch_shape if naming == "torch" else s.flax_shape) for s in specs}
    check_names_and_shapes(state, expected,
                           f"checkpoint does not match DLN({cfg.variant_string()}, dim={cfg.dim})")


def check_names_and_shapes(state: dict, expected: dict[str, tuple[int, ...]], what: str) -> None:
    """The strict check of any name -> tensor table (values or declarations with a shape)
    against the expected name -> shape table: CheckpointError "WHAT: N missing: ...;
    N unexpected: ...; N wrong shape: ..." with each list sorted."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{k} {tuple(np.shape(state[k]))} != expected {tuple(expected[k])}"
                   for k in set(expected) & set(state)
                   if tuple(np.shape(state[k])) != tuple(expected[k]))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_shorten(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_shorten(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} wrong shape: {_shorten(wrong, 4)}")
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))
