"""Every tensor of a DLN, by name and shape, in both frameworks' layouts.

The module tree is walked once here (no framework imported); the converter, the
random initialiser and the tests all read this one table. It is what the converter's
rules per torch module kind (weights/rules.py: Conv2d, Linear, PReLU) give for DLN,
written out so that no framework is needed to read it (a test runs the rules over
the reference model and compares); the layouts are the rules' own functions. A
tensor's Flax name is its torch name with two rename rules, and its layout follows
from its kind:

    kind        torch name / shape              Flax name / shape
    conv        B.conv.weight (O, I, kh, kw)    B.conv.kernel (kh, kw, I, O)
    dense       B.fc.0.weight (O, I)            B.fc_0.kernel (I, O)
    bias        B.bias (O,)                     B.bias (O,)
    prelu       B.act.weight (1,)               B.act.negative_slope ()
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import numpy as np

from core.config import FA_REDUCTION, DLNConfig
from weights.rules import flax_shape, to_flax, to_torch

LBP_OPS = ("conv1_1", "conv2", "conv3")  # lightening L1, darkening D, lightening L2


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    torch_name: str
    flax_name: str
    kind: str  # conv | dense | bias | prelu
    torch_shape: tuple[int, ...]

    @property
    def flax_shape(self) -> tuple[int, ...]:
        return flax_shape(self.kind, self.torch_shape)  # arithmetic: nothing allocated


def _conv(name: str, cin: int, cout: int, k: int, act: bool = True) -> Iterator[TensorSpec]:
    conv = f"{name}.conv" if act else name
    yield TensorSpec(f"{conv}.weight", f"{conv}.kernel", "conv", (cout, cin, k, k))
    yield TensorSpec(f"{conv}.bias", f"{conv}.bias", "bias", (cout,))
    if act:
        yield TensorSpec(f"{name}.act.weight", f"{name}.act.negative_slope", "prelu", (1,))


def _lbp(name: str, cin: int, dim: int) -> Iterator[TensorSpec]:
    squeezed = cin // FA_REDUCTION
    yield TensorSpec(f"{name}.fusion.fc.0.weight", f"{name}.fusion.fc_0.kernel", "dense",
                     (squeezed, cin))
    yield TensorSpec(f"{name}.fusion.fc.2.weight", f"{name}.fusion.fc_2.kernel", "dense",
                     (cin, squeezed))
    yield from _conv(f"{name}.fusion.outlayer", cin, dim, 1)
    for op in LBP_OPS:
        yield from _conv(f"{name}.{op}.conv_Encoder", dim, dim // 2, 3)
        yield from _conv(f"{name}.{op}.conv_Offset", dim // 2, dim // 2, 3)
        yield from _conv(f"{name}.{op}.conv_Decoder", dim // 2, dim, 3)
    yield from _conv(f"{name}.local_weight1_1", dim, dim, 1)
    yield from _conv(f"{name}.local_weight2_1", dim, dim, 1)


def tensor_specs(cfg: DLNConfig) -> list[TensorSpec]:
    """All tensors of the network, in the authors' state-dict order."""
    dim = cfg.dim
    specs: list[TensorSpec] = []
    specs += _conv("feat1", cfg.input_channels, 2 * dim, 3)
    specs += _conv("feat2", 2 * dim, dim, 3)
    for i in (1, 2, 3):
        specs += _lbp(f"feat_out_{i}", i * dim, dim)
    specs += _conv("feature", 4 * dim, dim, 3)
    specs += _conv("out", dim, 3, 3, act=False)
    return specs


def parameter_count(cfg: DLNConfig) -> int:
    return sum(math.prod(s.torch_shape) for s in tensor_specs(cfg))


def torch_to_flax_array(kind: str, value: np.ndarray) -> np.ndarray:
    """Apply one tensor kind's layout rule, torch -> Flax (weights.rules). Exact."""
    return to_flax(kind, value)


def flax_to_torch_array(kind: str, value: np.ndarray) -> np.ndarray:
    """Inverse of torch_to_flax_array."""
    return to_torch(kind, value)


def nest_dotted(flat: dict) -> dict:
    """{'a.b.kernel': v} -> {'a': {'b': {'kernel': v}}}: dotted Flax names as the params tree
    (flax.traverse_util, imported only here: every caller goes on to run the Flax model)."""
    from flax.traverse_util import unflatten_dict

    return unflatten_dict(flat, sep=".")
