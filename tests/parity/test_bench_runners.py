"""The timed forward passes (the one predictor's prepare / step): the fast JAX forward
equals the port, backends agree, and a failing torch.compile is reported as
unavailable instead of crashing."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import DLNConfig
from parity.engine.tolerance import assert_close
from weights.convert import checkpoint_from_torch_state
from weights.synthetic import random_torch_state

POINTWISE_CONVS = 9  # per LBP: fusion.outlayer, local_weight1_1, local_weight2_1 (x 3 LBPs)
ALL_CONVS = 40       # feat1, feat2, 3 x (1 + 9 + 2), feature, out


@pytest.fixture(scope="module")
def ckpt16():
    cfg = DLNConfig(dim=16)
    return checkpoint_from_torch_state(random_torch_state(cfg, seed=5), cfg)


def _x(batch=2, h=13, w=21, seed=0):
    return np.random.default_rng(seed).random((batch, h, w, 3), dtype=np.float32)


def test_inference_forward_equals_plain_model_and_computes_pointwise_convs_as_dots(ckpt16):
    import jax

    from port.inference import make_apply, params_to_device

    params = params_to_device(ckpt16.flax_tree())
    x = _x()
    port = make_apply(ckpt16.config, pointwise_as_dot=False)
    fast = make_apply(ckpt16.config)
    assert_close(np.asarray(fast(params, x)), np.asarray(port(params, x)), what="fast vs port")
    hlo_fast = fast.lower(params, jax.numpy.asarray(x)).as_text()
    hlo_port = port.lower(params, jax.numpy.asarray(x)).as_text()
    assert hlo_port.count("stablehlo.convolution") == ALL_CONVS
    assert hlo_fast.count("stablehlo.convolution") == ALL_CONVS - POINTWISE_CONVS
    assert hlo_fast.count("stablehlo.dot_general") - hlo_port.count("stablehlo.dot_general") \
        == POINTWISE_CONVS


def test_pointwise_rewrite_leaves_3x3_and_strided_convs_alone():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from port.pointwise import pointwise_conv_as_dot

    x = jnp.asarray(_x(1, 8, 8))
    for conv, expect_conv in ((nn.Conv(4, (1, 1), strides=(2, 2)), True),
                              (nn.Conv(4, (3, 3), padding=((1, 1), (1, 1))), True),
                              (nn.Conv(4, (1, 1), padding=((0, 0), (0, 0))), False)):
        params = conv.init(jax.random.PRNGKey(0), x)

        def plain(p):
            return conv.apply(p, x)

        def rewritten(p):
            with nn.intercept_methods(pointwise_conv_as_dot):
                return conv.apply(p, x)

        text = jax.jit(rewritten).lower(params).as_text()
        assert ("stablehlo.convolution" in text) == expect_conv, conv
        assert_close(np.asarray(rewritten(params)), np.asarray(plain(params)), what=str(conv))


def test_jax_and_torch_predictors_give_the_same_image(ckpt16):
    from frameworks.predictor import Predictor

    image = _x(1, 11, 17, seed=3)[0]
    outputs = {}
    for backend in ("jax", "torch"):
        runner = Predictor(ckpt16, backend)
        outputs[backend] = runner.predict(image)
        runner.prepare(image[None])
        runner.step()
    assert outputs["jax"].shape == image.shape
    assert_close(outputs["jax"], outputs["torch"], what="jax predictor vs torch predictor")


def test_torch_channels_last_predictor_gives_the_same_image(ckpt16):
    from frameworks.predictor import Predictor

    image = _x(1, 11, 17, seed=4)[0]
    nchw = Predictor(ckpt16, "torch", channels_last=False).predict(image)
    last = Predictor(ckpt16, "torch", channels_last=True)
    assert last.settings["memory_format"] == "channels_last"
    assert_close(last.predict(image), nchw, what="channels_last vs NCHW")


def test_a_failing_torch_compile_is_reported_unavailable_with_its_reason(ckpt16, monkeypatch):
    import torch

    from frameworks.predictor import BackendUnavailable, Predictor

    def broken_compile(model, **kwargs):
        def run(x):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    runner = Predictor(ckpt16, "torch-compile")
    with pytest.raises(BackendUnavailable, match="No working C\\+\\+ compiler"):
        runner.prepare(_x(1, 8, 8))


def test_unknown_backend_is_refused(ckpt16):
    from frameworks.predictor import Predictor

    with pytest.raises(ValueError, match="unknown backend"):
        Predictor(ckpt16, "tensorflow")


def test_jax_profile_attributes_op_time_to_the_authors_layer_names(ckpt16):
    from parity.bench.flops import layer_flops
    from frameworks.predictor import Predictor
    from parity.bench.jax_profile import kind_of, layer_of, profile_forward

    assert layer_of("jit(forward)/DLN/DLN.residual/feat_out_2/fusion/outlayer/conv/"
                    "dot_general") == "feat_out_2.fusion.outlayer.conv"
    assert layer_of("jit(forward)/DLN/DLN.residual/out/conv_general_dilated") == "out"
    assert layer_of("jit(forward)/DLN/DLN.residual/concatenate") is None
    kernels = {"feat1.conv": 3, "feat_out_1.local_weight1_1.conv": 1}
    assert kind_of("fusion", "jit(f)/DLN/DLN.residual/feat1/conv/conv_general_dilated",
                   kernels) == "3x3 convolution"
    assert kind_of("concatenate", "jit(f)/DLN/DLN.residual/concatenate", kernels) == "concatenate"

    runner = Predictor(ckpt16, "jax")
    runner.prepare(_x(1, 16, 24))
    profile = profile_forward(*runner.jax_forward, ckpt16.config, runs=1)
    every_layer = {n.rsplit(".", 1)[0] for n in layer_flops(ckpt16.config, 16, 24)}
    conv_layers = {n for n in every_layer if n.endswith("conv") or n == "out"}
    seen = {r["layer"] for r in profile["layers"]}
    # every convolution is seen; tiny dense layers may be fused into other ops
    assert conv_layers <= seen <= every_layer, (conv_layers - seen, seen - every_layer)
    shares = sum(k["share"] for k in profile["by_kind"])
    assert abs(shares - 1) < 1e-9, shares
    assert {"3x3 convolution", "1x1 convolution"} <= {k["kind"] for k in profile["by_kind"]}
