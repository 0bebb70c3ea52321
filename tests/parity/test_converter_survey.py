"""The converter survey: models with the structures of popular torchvision/timm networks
(parity/examples/survey_models.py) each convert (every tensor planned, or dropped when it
is an integer index), or are refused naming the exact module, kind and tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parity.examples.survey_models import SURVEY, NonDynamicallyQuantizableLinear
from weights.rules import NoConverterRule, plan_conversion

REFUSED = {   # model -> (module, kind, tensors the refusal must name)
    "conv + LSTM head": ("'rnn'", "LSTM", ["weight_ih_l0 (16, 4)", "weight_hh_l0 (16, 4)"]),
    "InstanceNorm tracking running stats": ("'1'", "InstanceNorm2d",
                                            ["running_mean", "running_var"]),
    "Bilinear head": ("'1'", "Bilinear", ["weight (2, 4, 4)", "bias (2,)"]),
}
DROPPED_INDICES = {"swin_tiny (timm)": ["attn.relative_position_index"],
                   "levit (timm)": ["attention_bias_idxs"]}


@pytest.mark.parametrize("name", list(SURVEY))
def test_each_surveyed_model_converts_or_is_refused_naming_module_kind_and_tensors(name):
    torch.manual_seed(0)
    model = SURVEY[name]()
    if name in REFUSED:
        module, kind, tensors = REFUSED[name]
        with pytest.raises(NoConverterRule) as info:
            plan_conversion(model)
        text = str(info.value)
        assert f"{module} of kind {kind}" in text and all(t in text for t in tensors), text
        return
    plan = plan_conversion(model)
    own = {n: t for m_name, m in model.named_modules()
           for n, t in [(f"{m_name}.{k}" if m_name else k, v) for k, v in
                        [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]]}
    planned = {r.torch_name for r in plan.rules}
    assert planned | set(plan.dropped) == set(own)
    for dropped in plan.dropped:     # only counters and indices are dropped
        assert not own[dropped].is_floating_point(), dropped
    assert [d for d in plan.dropped if not d.endswith("num_batches_tracked")] == \
        DROPPED_INDICES.get(name, [])


def test_subclasses_take_their_bases_rule_and_bare_tensors_keep_their_names():
    by_name = {r.torch_name: r for r in plan_conversion(SURVEY["vit_b_16 (torchvision)"]()).rules}
    assert by_name["class_token"].key == "params/class_token"
    assert by_name["encoder.pos_embedding"].key == "params/encoder/pos_embedding"
    out_proj = by_name["encoder.layers.0.self_attention.out_proj.weight"]
    assert out_proj.kind == "dense" and isinstance(
        NonDynamicallyQuantizableLinear(2, 2), torch.nn.Linear)
    convnext = {r.torch_name: r for r in plan_conversion(SURVEY["convnext_tiny (timm)"]()).rules}
    assert convnext["1.weight"].leaf == "scale" and convnext["2.gamma"].kind == "same"
    bn_act = {r.torch_name: r for r in plan_conversion(
        SURVEY["resnet with BatchNormAct2d (timm)"]()).rules}
    assert bn_act["1.running_var"].key == "batch_stats/1/var"


def test_user_rules_come_before_built_in_ones_for_the_same_class():
    model = SURVEY["conv + LSTM head"]()
    rules = {"LSTM": lambda module, flax_module: {n: ("params", n, "same") for n in
                                                  ("weight_ih_l0", "weight_hh_l0",
                                                   "bias_ih_l0", "bias_hh_l0")},
             torch.nn.Conv2d: lambda module, flax_module: {
                 "weight": ("params", "w", "conv"), "bias": None}}
    plan = plan_conversion(model, extra_rules=rules)
    by_name = {r.torch_name: r for r in plan.rules}
    assert by_name["features.weight"].leaf == "w" and "features.bias" in plan.dropped
    assert by_name["rnn.weight_ih_l0"].kind == "same"


def test_multihead_attention_splits_its_fused_projection_for_flax_attention():
    import flax.linen as fnn
    import jax

    from parity import compare, convert_weights

    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = mha

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    class Port(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            return fnn.MultiHeadDotProductAttention(2, name="attn")(x, x)

    x = np.random.default_rng(0).random((2, 5, 8), dtype=np.float32)
    variables = convert_weights(Wrapper(), Port(), x)
    assert jax.tree_util.tree_map(np.shape, variables["params"]["attn"]["query"]) == \
        {"kernel": (8, 2, 4), "bias": (2, 4)}
    report = compare(Wrapper(), Port(), variables, x)
    assert report.passed, report.failures[:2]
