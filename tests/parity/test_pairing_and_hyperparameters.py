"""Pairing by shape and execution order, its refusal of ties, and the hyperparameter diff's
padding rule, on tiny models."""

from __future__ import annotations

import flax.linen as fnn
import numpy as np
import pytest
import torch

from parity import prepare_port
from parity.engine.hyperparameters import effective_pads
from parity.engine.pairing import AmbiguousPairing

X = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)


class TwoBranches(torch.nn.Module):
    """Two 1x1 convs of one shape that run side by side: no order tells them apart."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 3, 1), torch.nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.a(x) * self.b(x)


class TwoBranchesPort(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        return fnn.Conv(3, (1, 1))(x) * fnn.Conv(3, (1, 1))(x)


def test_pairs_that_only_execution_order_separates_are_guessed_and_listed():
    torch.manual_seed(0)
    port = prepare_port(TwoBranches().eval(), TwoBranchesPort(), X)
    assert port.compare().passed
    assert port.mapping["a"] == "Conv_0" and port.mapping["b"] == "Conv_1"
    assert [g[2] for g in port.guessed] == ["shape, first to run", "shape"]


def test_a_tie_no_shape_or_order_breaks_is_refused_naming_the_candidates():
    from types import SimpleNamespace as Obj

    from parity.engine.pairing import pair_modules

    def rules(shape):
        return [Obj(collection="params", leaf="kernel", flax_shape=shape)]
    # torch runs u then a; u has no counterpart, so nothing anchors a, and the two Flax
    # modules of a's shape sit one place before and one after a's position
    plan = Obj(by_module=lambda: {"u": rules((1,)), "a": rules((2,))})
    census = Obj(modules={"P": None, "X": None, "Q": None},
                 shapes={"params/P/kernel": (2,), "params/X/kernel": (3,),
                         "params/Q/kernel": (2,)})
    with pytest.raises(AmbiguousPairing, match=r"'a' fits 2 Flax modules equally well "
                                                r"\(P, Q\).*--mapping"):
        pair_modules(plan, census, torch_order=["u", "a"])


@pytest.mark.parametrize("pads, size, expected", [
    (((1, 1),), 32, ((1, 0),)),     # stride 2, even size: the last pad row is never read
    (((1, 0),), 32, ((1, 0),)),
    (((0, 1),), 32, ((0, 1),)),     # SAME's split: another function
    (((1, 1),), 33, ((1, 1),)),     # odd size: both pads are read
])
def test_padding_is_compared_where_a_window_reads_it(pads, size, expected):
    assert effective_pads(pads, (size,), (3,), (2,), (1,)) == expected


def test_a_port_padding_strided_convs_by_what_they_read_passes():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, 2, 1)).eval()

    class Port(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            return fnn.Conv(4, (3, 3), (2, 2), padding=((1, 0), (1, 0)), name="layers_0")(x)

    report = prepare_port(conv, Port(), X).compare()
    assert report.passed, report.failures[:2]
