"""Checkpoints in either format, as one object; conversion between the formats.

A `Checkpoint` holds the network config and the tensors under both frameworks'
names and layouts. `load_checkpoint` reads .pth, .safetensors or an Orbax checkpoint
folder (weights/orbax_files.py); `convert` writes another format, verified.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from core.config import ConfigError, DLNConfig
from core.run_outputs import same_file
from weights.errors import CheckpointError
from weights.files import (is_safetensors_path, load_pth, load_safetensors, save_pth,
                           save_safetensors, sha256_of)
from weights.orbax_files import is_orbax_checkpoint, is_orbax_path, load_orbax, save_orbax
from weights.spec import (flax_to_torch_array, nest_dotted, parameter_count, tensor_specs,
                          torch_to_flax_array)
from weights.state_dict import check_against_spec, infer_config

FORMAT_NAME = "dln-flax-params"
FORMAT_VERSION = "1"
REQUIRED_METADATA = ("format", "format_version", "config")


@dataclasses.dataclass
class Checkpoint:
    config: DLNConfig
    torch_state: dict[str, np.ndarray]   # torch names, OIHW layout
    flax_params: dict[str, np.ndarray]   # dotted Flax paths, HWIO layout
    source: Path
    notes: list[str]
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)  # safetensors header's

    @property
    def parameter_count(self) -> int:
        return int(sum(v.size for v in self.torch_state.values()))

    def flax_tree(self) -> dict:
        """Nested dict for `model.apply({'params': tree}, x)`."""
        return nest_dotted(self.flax_params)


def _spelled(value) -> str:
    """A switch value as `--variant` spells it (on/off for booleans)."""
    return {True: "on", False: "off"}.get(value, str(value)) if isinstance(value, bool) \
        else str(value)


def _merge_stored(stored: DLNConfig | None, overrides: dict, source: Path) -> dict:
    """Combine the config stored in a file with the user's --variant.

    gamma is an inference-time strength and may always be overridden; every other
    switch the file records must agree with what was asked.
    """
    if stored is None:
        return dict(overrides)
    merged = dataclasses.asdict(stored)
    for key, value in overrides.items():
        if key != "gamma" and merged[key] != value:
            raise CheckpointError(
                f"variant conflict: {key}={_spelled(value)} was requested but {source.name} "
                f"was made with {key}={_spelled(merged[key])}")
        merged[key] = value
    return merged


def _from_torch_state(state, overrides, source, notes) -> Checkpoint:
    """A Checkpoint of an in-memory torch-named state dict, checked against the table."""
    cfg = infer_config(state, overrides)
    check_against_spec(state, cfg, "torch")
    return _checked_torch_state(state, cfg, source, notes)


def _checked_torch_state(state, cfg: DLNConfig, source, notes, metadata=None) -> Checkpoint:
    """A Checkpoint of a state dict already checked against cfg's table (no check again)."""
    flax = {s.flax_name: torch_to_flax_array(s.kind, state[s.torch_name])
            for s in tensor_specs(cfg)}
    return Checkpoint(cfg, state, flax, source, notes, dict(metadata or {}))


def _checked_flax_params(params, cfg: DLNConfig, source, notes, metadata) -> Checkpoint:
    """A Checkpoint of Flax-named params already checked against the table of the
    stored config (of which cfg differs at most in gamma and residual_sign, which no
    shape shows)."""
    specs = tensor_specs(cfg)
    state = {s.torch_name: flax_to_torch_array(s.kind, params[s.flax_name]) for s in specs}
    return Checkpoint(cfg, state, {s.flax_name: params[s.flax_name] for s in specs}, source,
                      notes, dict(metadata))


def load_checkpoint(path: str | os.PathLike, overrides: dict | None = None) -> Checkpoint:
    """Read a .pth (any of the authors' layouts), a .safetensors written by `convert`, or an
    Orbax checkpoint folder (written by `convert`, or `nnx.state` of an NNX DLN saved with
    Orbax's StandardCheckpointer).

    Every CheckpointError names the file, so a line among several models is placeable.
    """
    source = Path(path)
    try:
        return _load_checkpoint(source, overrides)
    except CheckpointError as err:
        if str(source) in str(err):
            raise
        raise CheckpointError(f"{source}: {err}") from None


def _check_safetensors_metadata(metadata: dict, source: Path) -> None:
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise CheckpointError(
            f"{source}: safetensors metadata lacks {', '.join(missing)} (not written by "
            "`dln convert`; convert the original .pth instead)")
    if metadata["format"] != FORMAT_NAME or metadata["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: format {metadata['format']!r} version {metadata['format_version']!r}"
            f" is not {FORMAT_NAME} version {FORMAT_VERSION}")


def _stored_config(text, source: Path) -> DLNConfig:
    """The network config a file records (text from its metadata), parsed once."""
    try:
        return DLNConfig.from_json(text)
    except ConfigError as err:
        raise CheckpointError(f"{source}: stored network config is invalid: {err}") from None


def _load_checkpoint(source: Path, overrides: dict | None) -> Checkpoint:
    """Every check runs once, while the tensors are only declared (the loaders' `check`):
    the stored config is parsed, merged with --variant, and names, shapes and dtypes
    are compared with the tensor table, so nothing the table does not expect, and
    nothing larger than it, is ever materialised; the materialised tensors have
    exactly the declared shapes and are not checked again."""
    overrides = dict(overrides or {})
    notes: list[str] = []
    if is_orbax_path(source):
        return _load_orbax_checkpoint(source, overrides, notes)
    decided: dict[str, DLNConfig] = {}
    if is_safetensors_path(source):
        def check_declared_flax(declared: dict, metadata: dict) -> None:
            if any(k not in metadata for k in REQUIRED_METADATA):
                return  # refused below, after the tensors' own checks (each holds its bytes)
            _check_safetensors_metadata(metadata, source)
            stored = _stored_config(metadata["config"], source)
            merged = _merge_stored(stored, overrides, source)
            check_against_spec(declared, stored, "flax")  # under the stored config
            decided["config"] = DLNConfig(**merged)

        params, metadata = load_safetensors(source, notes, check_declared_flax)
        if "config" not in decided:
            _check_safetensors_metadata(metadata, source)  # lacks some: refused now
        return _checked_flax_params(params, decided["config"], source, _dedupe(notes),
                                    metadata)

    def check_declared_torch(declared: dict, stored_json: str | None) -> None:
        stored = None if stored_json is None else _stored_config(stored_json, source)
        cfg = infer_config(declared, _merge_stored(stored, overrides, source))
        check_against_spec(declared, cfg, "torch")
        decided["config"] = cfg

    state, _ = load_pth(source, notes, check_declared_torch)
    return _checked_torch_state(state, decided["config"], source, _dedupe(notes))


def _load_orbax_checkpoint(source: Path, overrides: dict, notes: list[str]) -> Checkpoint:
    """An Orbax folder with this project's metadata is read like a safetensors file; one
    without (an NNX model's state saved by its user) gets its config from the shapes, as
    a .pth does. Either way the declared names and shapes meet the tensor table before
    anything is restored, and every check runs once."""
    decided: dict[str, DLNConfig] = {}

    def check_declared(declared: dict, metadata: dict) -> None:
        if "format" not in metadata:
            stored = _config_from_flax_shapes(declared, overrides)
            merged = dataclasses.asdict(stored)
        else:
            _check_safetensors_metadata(metadata, source)
            stored = _stored_config(metadata["config"], source)
            merged = _merge_stored(stored, overrides, source)
        check_against_spec(declared, stored, "flax")  # under the stored config
        decided["config"] = DLNConfig(**merged)

    params, metadata = load_orbax(source, notes, check_declared)
    return _checked_flax_params(params, decided["config"], source, _dedupe(notes), metadata)


def _config_from_flax_shapes(declared: dict, overrides: dict) -> DLNConfig:
    """infer_config for Flax-named tensors: feat1 / feat2 kernels (kh, kw, I, O) read as
    torch's (O, I, kh, kw)."""
    missing = [k for k in ("feat1.conv.kernel", "feat2.conv.kernel")
               if k not in declared or len(np.shape(declared[k])) != 4]
    if missing:
        raise CheckpointError(
            f"not a DLN checkpoint: no 4-D {' / '.join(missing)} among its {len(declared)} "
            f"tensors (first: {', '.join(sorted(declared)[:5]) or 'none'})")
    torch_like = {f"{k}.conv.weight": _TorchShape(np.shape(declared[f"{k}.conv.kernel"]))
                  for k in ("feat1", "feat2")}
    return infer_config(torch_like, overrides)


class _TorchShape:
    """A Flax kernel's declared shape (kh, kw, I, O) seen as torch's (O, I, kh, kw)."""

    def __init__(self, flax_shape):
        kh, kw, cin, cout = flax_shape
        self.shape = (cout, cin, kh, kw)
        self.ndim = 4


def _dedupe(notes: list[str]) -> list[str]:
    return list(dict.fromkeys(notes))


def checkpoint_from_torch_state(state: dict[str, np.ndarray], config: DLNConfig,
                                source: str = "<memory>") -> Checkpoint:
    """Wrap an in-memory torch-named state dict (e.g. random weights) as a Checkpoint."""
    overrides = {k: v for k, v in dataclasses.asdict(config).items()}
    return _from_torch_state({k: np.asarray(v, np.float32) for k, v in state.items()},
                             overrides, Path(source), [])


def safetensors_metadata(ckpt: Checkpoint) -> dict[str, str]:
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": ckpt.config.to_json(),
        "parameter_count": str(parameter_count(ckpt.config)),
        "layout": "flax-linen NHWC: conv kernels HWIO, dense kernels (in, out), PReLU scalar",
    }
    if ckpt.source.is_file():
        meta["source_file"] = ckpt.source.name
        meta["source_sha256"] = sha256_of(ckpt.source)
    return meta


def orbax_metadata(ckpt: Checkpoint) -> dict[str, str]:
    """The safetensors metadata, with the layout an Orbax folder of nnx.Param holds."""
    return {**safetensors_metadata(ckpt),
            "layout": "flax NNX state (nnx.Param under each dotted path) NHWC: conv kernels "
                      "HWIO, dense kernels (in, out), PReLU scalar"}


def checkpoint_format(path: str | os.PathLike, destination: bool = False) -> str:
    """"orbax", "safetensors" or "pth", by what the path is. A destination is Orbax by its
    .orbax name (or as an existing Orbax folder); a source when it is any folder."""
    if (is_orbax_checkpoint(Path(path)) or str(path).rstrip("/").lower().endswith(".orbax")) \
            if destination else is_orbax_path(path):
        return "orbax"
    return "safetensors" if is_safetensors_path(path) else "pth"


def save_checkpoint(ckpt: Checkpoint, dst: str | os.PathLike, dataparallel: bool = False,
                    overwrite: bool = True) -> None:
    """Write ckpt as .safetensors (Flax names), .pth (torch names) or an Orbax folder
    (name ending in .orbax: the NNX state's Params), by dst's name.
    overwrite=False refuses an existing dst (also one that appears while writing)."""
    if checkpoint_format(dst, destination=True) == "orbax":
        save_orbax(ckpt.flax_params, dst, orbax_metadata(ckpt), overwrite)
    elif is_safetensors_path(dst):
        save_safetensors(ckpt.flax_params, dst, safetensors_metadata(ckpt), overwrite)
    elif str(dst).lower().endswith((".pth", ".pt")):
        save_pth(ckpt.torch_state, dst, ckpt.config.to_json(), dataparallel=dataparallel,
                 overwrite=overwrite)
    else:
        raise CheckpointError(f"{dst}: destination must end in .safetensors, .pth, .pt or "
                              ".orbax (an Orbax checkpoint folder)")


@dataclasses.dataclass
class ConversionReport:
    source: str
    destination: str
    config: DLNConfig
    parameter_count: int
    tensors: int
    notes: list[str]

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["config"] = json.loads(self.config.to_json())
        return out


def convert(src: str | os.PathLike, dst: str | os.PathLike, overrides: dict | None = None,
            dataparallel: bool = False, overwrite: bool = True) -> ConversionReport:
    """Convert between .pth, .safetensors and Orbax folders; the destination is verified
    bit for bit. overwrite=False (what `dln convert` does without --overwrite) refuses an
    existing destination."""
    if Path(dst).is_dir() and checkpoint_format(dst, destination=True) != "orbax":
        raise CheckpointError(f"{dst}: is a folder, not a checkpoint name (an Orbax "
                              "destination is a new folder named NAME.orbax)")
    if checkpoint_format(src) == checkpoint_format(dst, destination=True):
        raise CheckpointError(
            f"convert goes between .pth, .safetensors and Orbax folders (.orbax); got "
            f"{Path(src).name} -> {Path(dst).name}")
    if same_file(src, dst):  # also through a link or a second hard link (core.run_outputs)
        raise CheckpointError(f"{dst}: is the source itself; the source is never "
                              "replaced, even with --overwrite")
    if not overwrite and (Path(dst).exists() or Path(dst).is_symlink()):
        raise CheckpointError(f"{dst}: exists (use --overwrite to replace it)")
    ckpt = load_checkpoint(src, overrides)
    save_checkpoint(ckpt, dst, dataparallel=dataparallel, overwrite=overwrite)
    return ConversionReport(str(src), str(dst), ckpt.config, ckpt.parameter_count,
                            len(ckpt.torch_state), ckpt.notes)
