"""The Flax NNX DLN holds exactly the Linen port's tensors (so one safetensors file serves
both) and computes what the Linen port computes, through a jitted pure function."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import DLNConfig
from parity.engine.tolerance import FORWARD_ATOL, NNX_VS_LINEN_ATOL, assert_close
from weights.convert import checkpoint_from_torch_state
from weights.spec import tensor_specs
from weights.synthetic import random_torch_state


def _flat_state(model) -> dict:
    from flax import nnx

    return {".".join(map(str, path)): var for path, var in nnx.to_flat_state(nnx.state(model))}


def test_nnx_state_paths_are_the_converters_flax_names_and_count_700586_at_dim_64():
    from flax import nnx

    from port.nnx_model import abstract_model

    flat = _flat_state(abstract_model(DLNConfig()))
    specs = {s.flax_name: s.flax_shape for s in tensor_specs(DLNConfig())}
    assert sorted(flat) == sorted(specs)
    assert {k: tuple(v.shape) for k, v in flat.items()} == specs
    assert sum(int(np.prod(v.shape)) for v in flat.values()) == 700_586
    assert all(isinstance(v, nnx.Param) for v in flat.values())  # no RNG state, no stats
    # every k x k conv is 2-D (an int kernel_size would give 1-D kernels)
    assert flat["feat1.conv.kernel"].shape == (3, 3, 4, 128)


def test_nnx_initialisation_draws_kaiming_kernels_zero_biases_and_torch_prelu_slopes():
    """Every ConvBlock and the last conv of the NNX DLN are built by the two pieces drawn
    here (a whole dim-16 DLN takes ~6 s of eager compiles on a 2-core CPU)."""
    import jax
    from flax import nnx

    from port.nnx_model import ConvBlock

    block = ConvBlock(64, 256, 3, 1, rngs=nnx.Rngs(params=jax.random.key(1, impl="rbg")))
    kernel = np.asarray(block.conv.kernel[...])
    assert kernel.shape == (3, 3, 64, 256)  # a (k, k) kernel, HWIO
    assert abs(kernel.std() / np.sqrt(2 / 576) - 1) < 0.05  # fan in 3 * 3 * 64, gain sqrt 2
    assert not np.asarray(block.conv.bias[...]).any()
    assert float(block.act.negative_slope[...]) == 0.25  # torch's PReLU default, not 0.01
    assert block.conv.padding == ((1, 1), (1, 1))  # explicit, not NNX's default 'SAME'


@pytest.mark.parametrize("cfg,shape", [
    (DLNConfig(dim=16), (2, 37, 29, 3)),
    (DLNConfig(dim=16, brightness=False, residual_sign="paper", gamma=0.4), (1, 19, 27, 3)),
])
def test_nnx_forward_equals_the_linen_forward_on_the_same_params_tree(cfg, shape):
    from port.inference import make_apply, params_to_device
    from port.nnx_inference import make_nnx_apply

    ckpt = checkpoint_from_torch_state(random_torch_state(cfg, 5), cfg)
    params = params_to_device(ckpt.flax_tree())
    x = np.random.default_rng(5).random(shape, dtype=np.float32)
    linen = np.asarray(make_apply(cfg)(params, x))
    nnx_out = np.asarray(make_nnx_apply(cfg)(params, x))
    assert np.abs(linen - x).mean() > 0.05  # the residual is not trivially zero
    assert_close(nnx_out, linen, NNX_VS_LINEN_ATOL, f"NNX vs Linen {cfg.variant_string()}")
    if shape[0] == 1:  # the 1x1-as-dot rewrite is exact to float32 rounding
        plain = make_nnx_apply(cfg, pointwise_as_dot=False)
        assert_close(np.asarray(plain(params, x)), nnx_out, FORWARD_ATOL, "1x1 as dot vs conv")


def test_nnx_apply_rewrites_exactly_the_1x1_convolutions_into_dot_products():
    import jax

    from port.nnx_inference import make_nnx_apply

    cfg = DLNConfig(dim=16)
    params = checkpoint_from_torch_state(random_torch_state(cfg, 0), cfg).flax_tree()
    x = np.zeros((1, 12, 12, 3), np.float32)
    jaxprs = [str(jax.make_jaxpr(make_nnx_apply(cfg, dot))(params, x)) for dot in (True, False)]
    convs = [j.count("conv_general_dilated[") for j in jaxprs]
    dots = [j.count("dot_general[") for j in jaxprs]
    # per LBP: the FA outlayer and two local weights are 1x1 (9 in all); the 3x3 stay
    assert convs[1] - convs[0] == 9 and dots[0] - dots[1] == 9, (convs, dots)
    assert "precision=None" not in jaxprs[0] and "precision=DEFAULT" not in jaxprs[0]


def test_nnx_apply_is_a_plain_jit_of_params_and_image_not_nnx_jit():
    """The hot path's argument is the params pytree (as for Linen): no NNX graph object
    crosses the jit boundary, so no graph is walked per call."""
    import jax

    from port.nnx_inference import make_nnx_apply

    apply = make_nnx_apply(DLNConfig(dim=16))
    assert isinstance(apply, type(jax.jit(lambda a: a)))


def test_model_from_params_round_trips_bit_exactly_and_refuses_misfits_by_name():
    from port.nnx_model import model_from_params
    from weights.errors import CheckpointError
    from weights.nnx_state import flat_weights

    cfg = DLNConfig(dim=16)
    params = checkpoint_from_torch_state(random_torch_state(cfg, 4), cfg).flax_params
    model = model_from_params(cfg, params)
    back = flat_weights(model)
    assert sorted(back) == sorted(params)
    assert all(back[k].tobytes() == v.tobytes() for k, v in params.items())
    with pytest.raises(CheckpointError, match=r"1 wrong shape: feat1\.conv\.kernel \(3, 3, 32, 4\)"):
        model_from_params(cfg, {**params, "feat1.conv.kernel":
                                params["feat1.conv.kernel"].transpose(0, 1, 3, 2)})


def test_an_orbax_folder_from_dln_convert_restores_into_an_eval_shape_nnx_dln_with_orbax_alone(
        tmp_path):
    """What an NNX user does with the folder, without this project's loader."""
    import orbax.checkpoint as ocp
    from flax import nnx

    from port.nnx_model import abstract_model
    from weights.convert import save_checkpoint
    from weights.nnx_state import flat_weights

    cfg = DLNConfig(dim=16, brightness=False)
    ckpt = checkpoint_from_torch_state(random_torch_state(cfg, 6), cfg)
    save_checkpoint(ckpt, tmp_path / "w.orbax")
    graphdef, abstract_state = nnx.split(abstract_model(cfg))
    checkpointer = ocp.StandardCheckpointer()
    restored = checkpointer.restore(tmp_path / "w.orbax", abstract_state)
    checkpointer.close()
    back = flat_weights(nnx.merge(graphdef, restored))
    assert all(back[k].tobytes() == v.tobytes() for k, v in ckpt.flax_params.items())
