"""Both frameworks hold exactly the authors' tensors: names, shapes, count."""

import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from core.config import DLNConfig
from weights.spec import parameter_count, tensor_specs


def expected_count(dim: int, in_ch: int = 4) -> int:
    """The parameter count derived by hand from the authors' network structure.

    ConvBlock(cin, cout, k) = cout*cin*k*k weights + cout biases + 1 PReLU slope.
    LBP(cin) = FA dense cin*(cin/16)*2 + outlayer ConvBlock(cin, dim, 1)
               + 3 ops * [ConvBlock(dim, dim/2, 3) + ConvBlock(dim/2, dim/2, 3)
                          + ConvBlock(dim/2, dim, 3)] + 2 ConvBlock(dim, dim, 1).
    """
    def block(cin, cout, k):
        return cout * cin * k * k + cout + 1

    def lbp(cin):
        half = dim // 2
        ops = 3 * (block(dim, half, 3) + block(half, half, 3) + block(half, dim, 3))
        return 2 * cin * (cin // 16) + block(cin, dim, 1) + ops + 2 * block(dim, dim, 1)

    return (block(in_ch, 2 * dim, 3) + block(2 * dim, dim, 3) + lbp(dim) + lbp(2 * dim)
            + lbp(3 * dim) + block(4 * dim, dim, 3) + (3 * dim * 9 + 3))


def test_hand_derived_count_is_the_published_700586():
    assert expected_count(64) == 700_586
    assert parameter_count(DLNConfig()) == 700_586
    assert len(tensor_specs(DLNConfig())) == 125


def test_torch_reference_state_dict_is_the_authors_125_keys():
    from reference_torch.model import DLN

    sd = DLN(DLNConfig()).state_dict()
    specs = tensor_specs(DLNConfig())
    assert list(sd) == [s.torch_name for s in specs]
    assert {k: tuple(v.shape) for k, v in sd.items()} == {s.torch_name: s.torch_shape for s in specs}
    assert sum(v.numel() for v in sd.values()) == 700_586


def _flax_parameters(cfg: DLNConfig, real_init: bool) -> dict:
    """The port's parameters: a real Flax init (values), or only their shapes from
    jax.eval_shape of the same init (the full-width init takes ~25 s of XLA compiles of
    random initialisers on a 2-core CPU; its shapes need none of that)."""
    import jax

    from port.model import init_params

    if real_init:
        return flatten_dict(init_params(cfg), sep=".")
    return flatten_dict(jax.eval_shape(lambda: init_params(cfg)), sep=".")


@pytest.mark.parametrize("cfg,real_init", [(DLNConfig(), False),
                                           (DLNConfig(dim=16, brightness=False), True)])
def test_flax_port_has_the_same_count_and_2d_kernels(cfg, real_init):
    flat = _flax_parameters(cfg, real_init)
    specs = {s.flax_name: s for s in tensor_specs(cfg)}
    assert set(flat) == set(specs)
    assert sum(int(np.prod(v.shape)) for v in flat.values()) == parameter_count(cfg) == \
        expected_count(cfg.dim, cfg.input_channels)
    for name, spec in specs.items():
        assert flat[name].shape == spec.flax_shape, name
        if spec.kind == "conv":
            # a 1-D conv (the earlier port's bug) would have a 3-D kernel
            assert len(flat[name].shape) == 4 and flat[name].shape[0] == flat[name].shape[1], name
        if spec.kind == "prelu":
            assert flat[name].shape == (), name
            if real_init:  # torch.nn.PReLU's 0.25, not Flax's own 0.01
                assert float(flat[name]) == 0.25, name


def test_one_dimensional_kernels_would_lose_exactly_the_reported_280k():
    """The earlier port's 421,610 parameters: every k x k conv became 1 x k, and its
    feature block had 4*dim outputs (facts section 7, defects 1 and 2)."""
    total = 0
    for s in tensor_specs(DLNConfig()):
        shape = list(s.torch_shape)
        if s.kind == "conv":
            shape[2] = 1  # kernel height 1: (O, I, 1, k)
        total += int(np.prod(shape))
    # defect 2: feature ConvBlock(256 -> 256) 1x3 and out reading 256 channels
    total += (256 * 256 * 3 + 256) - (64 * 256 * 3 + 64) + (3 * 256 * 3) - (3 * 64 * 3)
    # defect 4: the FA outlayer convs without bias (64 outputs each, 3 blocks)
    total -= 3 * 64
    assert total == 421_610
