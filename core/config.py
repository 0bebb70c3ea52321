"""The one network configuration shared by the PyTorch reference and the Flax port.

This module imports no deep-learning framework, so either side can use it without
starting the other. The defaults are the authors' released code;
the switches select the paper's choices instead.
"""

from __future__ import annotations

from core.errors import UserError
import dataclasses
import json
from typing import Any

FA_REDUCTION = 16  # feature-aggregation squeeze ratio: fc.0 maps cin -> cin // 16
# The widest DLN this toolkit builds: 177,342,506 parameters (0.66 GiB of float32; the
# authors' width is 64, 700,586). Wider ones would pass the 2**28 values a checkpoint
# may hold (weights/files.py) and no machine here could train or run them; a --variant
# or a checkpoint's metadata asking for more is refused before anything is sized by it.
MAX_DIM = 1024
RESIDUAL_SIGNS = ("code", "paper")
_TRUE = {"on", "true", "1", "yes"}
_FALSE = {"off", "false", "0", "no"}


class ConfigError(UserError, ValueError):
    """A configuration that cannot describe a DLN (bad width, unknown switch, ...)."""


@dataclasses.dataclass(frozen=True)
class DLNConfig:
    """Width and paper-versus-code switches of a DLN.

    dim:           width of the trunk (64 in the authors' checkpoints); even, >= 16
                   because the FA block squeezes its input channels by 16, and
                   <= MAX_DIM.
    brightness:    True (code): a max-over-channels map of the unscaled input is a 4th
                   input channel. False (paper): feat1 reads the 3 scaled channels only.
    gamma:         pred = x + gamma * P(x); an inference-time strength (paper), 1.0 in
                   the code. Weights do not depend on it.
    residual_sign: "code": L2(lambda1 X - D(L1 X)); "paper": L2(D(L1 X) - lambda1 X).
    """

    dim: int = 64
    brightness: bool = True
    gamma: float = 1.0
    residual_sign: str = "code"

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or isinstance(self.dim, bool):
            raise ConfigError(f"dim must be an integer, got {self.dim!r}")
        if self.dim < FA_REDUCTION or self.dim % 2:
            raise ConfigError(
                f"dim must be an even integer >= {FA_REDUCTION} (the FA reduction is "
                f"{FA_REDUCTION} and the LBP encoder halves the width), got {self.dim}")
        if self.dim > MAX_DIM:
            raise ConfigError(f"dim must be at most {MAX_DIM} (177,342,506 parameters; the "
                              f"authors' DLN has dim 64), got {self.dim}")
        if not isinstance(self.brightness, bool):
            raise ConfigError(f"brightness must be a bool, got {self.brightness!r}")
        try:
            gamma = float(self.gamma)
        except (TypeError, ValueError):
            raise ConfigError(f"gamma must be a number, got {self.gamma!r}") from None
        if isinstance(self.gamma, bool) or gamma != gamma or gamma in (float("inf"), float("-inf")):
            raise ConfigError(f"gamma must be finite, got {self.gamma!r}")
        object.__setattr__(self, "gamma", gamma)
        if not isinstance(self.residual_sign, str) or self.residual_sign not in RESIDUAL_SIGNS:
            raise ConfigError(
                f"residual_sign must be one of {', '.join(RESIDUAL_SIGNS)}, got {self.residual_sign!r}")

    @property
    def input_channels(self) -> int:
        """Channels entering feat1: RGB plus the brightness map when it is on."""
        return 4 if self.brightness else 3

    def replace(self, **changes: Any) -> "DLNConfig":
        return dataclasses.replace(self, **changes)

    # ---- text forms -------------------------------------------------------------
    def variant_string(self) -> str:
        """The switches as `dln --variant` spells them."""
        return (f"brightness={'on' if self.brightness else 'off'},"
                f"gamma={self.gamma:g},residual_sign={self.residual_sign}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DLNConfig":
        try:
            data = json.loads(text)
        except (TypeError, ValueError, RecursionError) as err:  # hostile text: nesting too
            raise ConfigError(f"network config is not JSON: {' '.join(str(err).split())[:120]}"
                              ) from None
        if not isinstance(data, dict):
            raise ConfigError("network config must be a JSON object")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown network config fields: {', '.join(unknown)}")
        return cls(**data)


def parse_variant(text: str | None) -> dict[str, Any]:
    """Parse `brightness=off,residual_sign=paper,gamma=0.5` into config overrides.

    Returns only the switches that were named, so callers can tell "asked for"
    from "default" when reconciling with a checkpoint.
    """
    overrides: dict[str, Any] = {}
    if not text:
        return overrides
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip().replace("-", "_"), value.strip().lower()
        if not sep or not value:
            raise ConfigError(f"variant item {item!r} is not of the form name=value")
        if key in overrides:
            raise ConfigError(f"variant names {key!r} twice")
        if key == "brightness":
            if value in _TRUE:
                overrides[key] = True
            elif value in _FALSE:
                overrides[key] = False
            else:
                raise ConfigError(f"brightness must be on or off, got {value!r}")
        elif key == "gamma":
            try:
                overrides[key] = float(value)
            except ValueError:
                raise ConfigError(f"gamma must be a number, got {value!r}") from None
        elif key == "residual_sign":
            if value not in RESIDUAL_SIGNS:
                raise ConfigError(f"residual_sign must be code or paper, got {value!r}")
            overrides[key] = value
        elif key == "dim":
            try:
                overrides[key] = int(value)
            except ValueError:
                raise ConfigError(f"dim must be an integer, got {value!r}") from None
        else:
            raise ConfigError(
                f"unknown variant switch {key!r} (known: brightness, gamma, residual_sign, dim)")
    DLNConfig(**overrides)  # validate the values now, with the same messages
    return overrides
