"""timm/torchvision parts (BatchNormAct2d, LayerNorm2d, Swin relative position bias table
and index buffer, layer-scale gamma, NonDynamicallyQuantizableLinear) converted and checked
end to end against a Flax port; a planted defect in the bias index is named in `attn`; a
fixture keeps the layouts."""

from __future__ import annotations

import numpy as np

from parity import check_fixture, prepare_port, save_fixture
from parity.examples.timm_parts import flax_model, torch_model

X = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)


def test_timm_parts_convert_and_pass_and_a_swapped_bias_index_is_named_in_attn(tmp_path):
    model = torch_model.build()
    port = prepare_port(model, flax_model.build(), X)
    report = port.compare()
    assert report.passed, report.failures[:2]
    assert "attn.relative_position_index" in port.plan.dropped
    keys = {r.key for r in port.plan.rules}
    assert {"params/gamma", "params/attn/relative_position_bias_table",
            "batch_stats/bn/var", "params/head/kernel"} <= keys
    rows = {r.name: r for r in report.rows}
    assert rows["norm"].layout == "channels-last" and rows["attn"].layout == "as-is"
    # BatchNormAct2d's output has passed its act: not judged against a plain BatchNorm
    assert {r.status for r in report.rows if r.name == "bn"} == {"only in torch",
                                                                  "only in flax"}
    bad = prepare_port(model, flax_model.build_swapped_index(), X).compare()
    assert bad.first_divergence_module.startswith("attn")
    path = save_fixture(tmp_path / "parts.safetensors", model, flax_model.build(), X)
    assert check_fixture(path, flax_model.build()).passed
