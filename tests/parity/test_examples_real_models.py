"""The ResNet (torchvision structure) and ViT (timm structure) examples: correct ports pass,
each planted defect is named at its module, and the four wrong verdicts real models gave
(a LayerNorm eps false pass on a large residual stream, tokens returned (N, C, L), L == C,
automatic names with the projection shortcut built first) are right."""

from __future__ import annotations

import numpy as np
import pytest

from parity import prepare_port
from parity.engine.rows import HYPERPARAMETER, ONLY_TORCH, suspects
from parity.engine.torch_side import LayoutUnknown
from parity.examples.resnet import flax_model as rflax, torch_model as rtorch
from parity.examples.vit import flax_model as vflax, torch_model as vtorch

IMAGES = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
VIT_IMAGES = np.random.default_rng(1).random((2, 3, 16, 16), dtype=np.float32)
TOKENS = np.random.default_rng(2).random((2, 5, 16), dtype=np.float32)


@pytest.fixture(scope="module")
def resnet():
    return rtorch.build()


@pytest.fixture(scope="module")
def vit():
    return vtorch.build()


def test_resnet_port_with_automatic_names_and_the_shortcut_built_first_passes(resnet):
    port = prepare_port(resnet, rflax.build_auto_names(), IMAGES)
    report = port.compare()
    assert report.passed, report.failures[:2]
    # the BatchNorms of a block have one shape: each is paired after its own conv
    assert port.mapping["layer2.0.bn1"] == "BasicBlock_1/BatchNorm_1"
    assert port.mapping["layer2.0.downsample.1"] == "BasicBlock_1/BatchNorm_0"
    assert ("layer2.0.bn1", "BasicBlock_1/BatchNorm_1", "shape, after layer2.0.conv1") in \
        port.guessed


def test_resnet_named_port_passes_with_nothing_guessed(resnet):
    port = prepare_port(resnet, rflax.build(), IMAGES)
    assert port.compare().passed and port.guessed == []


def test_resnet_max_pool_padding_is_named_at_maxpool_and_blamed_as_a_suspect(resnet):
    report = prepare_port(resnet, rflax.build_pool_same(), IMAGES).compare()
    assert report.first_divergence_module == "maxpool"
    assert report.failures[0].status == HYPERPARAMETER
    # the numbers alone fail first at the next conv, with maxpool among the suspects
    numbers = type(report)([r for r in report.rows if r.status != HYPERPARAMETER], report.tol)
    assert numbers.first_divergence == "layer1.0.conv1"
    assert "maxpool" in suspects(numbers)
    assert {r.name: r.status for r in report.rows}["maxpool"] == ONLY_TORCH


def test_resnet_batchnorm_momentum_shows_only_in_training_mode():
    x = np.random.default_rng(3).random((2, 3, 64, 64), dtype=np.float32)
    torch_model = rtorch.build()
    assert prepare_port(torch_model, rflax.build_bn_momentum(), x).compare().passed
    good = prepare_port(torch_model, rflax.build(), x, training=True).compare()
    assert good.passed, good.failures[:2]
    assert {"bn1.running_mean", "bn1.running_var"} <= {r.name for r in good.compared}
    bad = prepare_port(torch_model, rflax.build_bn_momentum(), x, training=True).compare()
    assert bad.first_divergence_module == "bn1"
    assert {r.name: r.status for r in bad.rows}["bn1.running_mean"] == "fail"
    # training left the torch model's statistics as they were
    assert torch_model.bn1.running_mean.abs().max() > 0 and not torch_model.training


def test_vit_port_passes_and_each_planted_defect_is_named_at_its_module(vit):
    # five ports, each traced and compiled once (~9 s on the 2-core machine): one per defect
    assert prepare_port(vit, vflax.build(), VIT_IMAGES).compare().passed
    expected = {"build_scale": "blocks.0.attn.proj", "build_qkv_order": "blocks.0.attn.proj",
                "build_gelu_tanh": "blocks.0.mlp.act", "build_ln_eps": "blocks.0.norm1"}
    for factory, module in expected.items():
        report = prepare_port(vit, getattr(vflax, factory)(), VIT_IMAGES).compare()
        assert report.first_divergence_module == module, (factory, report.failures[:2])


def test_layernorm_eps_below_tolerance_on_a_large_residual_stream_still_fails():
    torch_model = vtorch.build_large_stream()
    report = prepare_port(torch_model, vflax.build_ln_eps(), VIT_IMAGES).compare()
    numeric = [r for r in report.rows if r.status != HYPERPARAMETER]
    assert all(not r.failed for r in numeric)       # the numbers alone would pass
    assert not report.passed and report.first_divergence == "blocks.0.norm1 [eps]"


def test_tokens_returned_channels_first_fail_even_when_tokens_equal_width():
    torch_model = vtorch.build_features_square()      # 16 tokens of width 16
    good = prepare_port(torch_model, vflax.build_features_square(), VIT_IMAGES).compare()
    assert good.passed, good.failures[:2]             # L == C is not compared transposed
    rows = {r.name: r for r in good.rows}
    assert rows["patch_embed"].layout == "as-is" and rows["patch_embed.proj"].layout == \
        "channels-last"
    bad = prepare_port(torch_model, vflax.build_features_transposed(), VIT_IMAGES).compare()
    assert bad.first_divergence == "prediction"


def test_token_input_layout_is_read_from_its_first_reader_or_declared():
    block = vtorch.build_block()
    port = prepare_port(block, vflax.build_block(), TOKENS)
    assert port.reference.input_layouts == ("as-is",) and port.compare().passed
    declared = prepare_port(block, vflax.build_block(), TOKENS, input_layout="as-is")
    assert declared.compare().passed


def test_a_3d_input_no_module_explains_must_be_declared():
    import torch

    class Reshaper(torch.nn.Module):
        def forward(self, x):
            return x * 2

    with pytest.raises(LayoutUnknown, match="--input-layout"):
        prepare_port(Reshaper(), vflax.build_block(), TOKENS)
