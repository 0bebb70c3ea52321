"""`dln check` on the real-model examples through the command line only: --train,
--input-layout, --mapping, --apply-kwargs, --rules, guessed pairs, and errors users cause."""

from __future__ import annotations

import json

import pytest

from dln.cli import main

RESNET = "parity/examples/resnet/{}.py:{}"
VIT = "parity/examples/vit/{}.py:{}"
CYCLEGAN = "parity/examples/cyclegan/{}.py:{}"


def check(capsys, torch_factory, flax_factory, shape, *extra):
    code = main(["check", "--torch", torch_factory, "--flax", flax_factory,
                 "--input-shape", shape, *extra])
    return code, capsys.readouterr()


def test_momentum_defect_exits_1_with_train(capsys):
    # (without --train it passes: test_examples_real_models)
    args = (RESNET.format("torch_model", "build"),
            RESNET.format("flax_model", "build_bn_momentum"), "2,3,32,32")
    code, out = check(capsys, *args, "--train")
    assert code == 1 and "first divergence at bn1 [momentum" in out.out


def test_automatic_names_pass_and_the_guessed_pairs_are_printed(capsys):
    code, out = check(capsys, RESNET.format("torch_model", "build"),
                      RESNET.format("flax_model", "build_auto_names"), "2,3,32,32")
    assert code == 0, out.out[-400:]
    assert "paired by shape and execution order: layer2.0.bn1 -> BasicBlock_1/BatchNorm_1" \
        in out.out


def test_a_mapping_file_is_used_as_given(capsys, tmp_path):
    swapped = tmp_path / "mapping.json"   # two BatchNorms of one width, swapped on purpose
    swapped.write_text(json.dumps({"layer2.0.bn1": "BasicBlock_1/BatchNorm_0",
                                   "layer2.0.downsample.1": "BasicBlock_1/BatchNorm_1"}))
    code, out = check(capsys, RESNET.format("torch_model", "build"),
                      RESNET.format("flax_model", "build_auto_names"), "2,3,32,32",
                      "--mapping", str(swapped))
    assert code == 1 and "first divergence at layer2.0" in out.out
    swapped.write_text("[1, 2]")
    code, out = check(capsys, RESNET.format("torch_model", "build"),
                      RESNET.format("flax_model", "build_auto_names"), "2,3,32,32",
                      "--mapping", str(swapped))
    assert code == 2 and "expected an object of torch module names" in out.err


def test_apply_kwargs_reach_the_flax_apply(capsys):
    code, out = check(capsys, RESNET.format("torch_model", "build"),
                      RESNET.format("flax_model", "build"), "2,3,32,32",
                      "--apply-kwargs", '{"train": true}')   # batch statistics in Flax only
    assert code == 1 and "first divergence at bn1" in out.out
    code, out = check(capsys, RESNET.format("torch_model", "build"),
                      RESNET.format("flax_model", "build"), "2,3,32,32",
                      "--apply-kwargs", "train")
    assert code == 2 and "--apply-kwargs" in out.err


def test_token_input_block_with_declared_layout(capsys):
    code, out = check(capsys, VIT.format("torch_model", "build_block"),
                      VIT.format("flax_model", "build_block"), "2,5,16",
                      "--input-layout", "as-is")
    assert code == 0, out.out[-400:]
    code, out = check(capsys, VIT.format("torch_model", "build_block"),
                      VIT.format("flax_model", "build_block_ln_eps"), "2,5,16",
                      "--input-layout", "as-is")
    assert code == 1 and "first divergence at norm1 [eps]" in out.out


def test_user_rules_from_a_file(capsys, tmp_path):
    (tmp_path / "net.py").write_text(
        "import torch\n"
        "class Gain(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.g = torch.nn.Parameter(torch.full((4,), 1.5))\n"
        "    def forward(self, x):\n"
        "        return x * self.g\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Linear(4, 4), Gain())\n")
    (tmp_path / "port.py").write_text(
        "import flax.linen as nn\n"
        "class Gain(nn.Module):\n"
        "    @nn.compact\n"
        "    def __call__(self, x):\n"
        "        return x * self.param('alpha', nn.initializers.ones, (4,))\n"
        "class Net(nn.Module):\n"
        "    @nn.compact\n"
        "    def __call__(self, x):\n"
        "        return Gain(name='layers_1')(nn.Dense(4, name='layers_0')(x))\n"
        "def build():\n"
        "    return Net()\n")
    (tmp_path / "rules.py").write_text(
        "RULES = {'Gain': lambda module, flax_module: {'g': ('params', 'alpha', 'same')}}\n")
    args = (f"{tmp_path}/net.py:build", f"{tmp_path}/port.py:build", "2,4")
    code, out = check(capsys, *args)
    assert code == 1 and "missing: params/layers_1/alpha" in out.err + out.out
    code, out = check(capsys, *args, "--rules", str(tmp_path / "rules.py"))
    assert code == 0, out.out[-400:]


@pytest.mark.parametrize("body, message", [
    ("def build():\n    raise RuntimeError('no weights here')\n",
     "build failed: RuntimeError: no weights here"),
    ("def build():\n    return 3\n", "returned int, not a torch.nn.Module"),
])
def test_a_factory_that_raises_or_returns_the_wrong_type_is_one_line_and_exit_2(
        capsys, tmp_path, body, message):
    (tmp_path / "bad.py").write_text(body)
    code, out = check(capsys, f"{tmp_path}/bad.py:build",
                      RESNET.format("flax_model", "build"), "2,3,32,32")
    assert code == 2 and message in out.err and "Traceback" not in out.err


def test_cyclegan_port_passes_and_zero_padding_is_named_at_the_reflection_pad(capsys):
    code, out = check(capsys, CYCLEGAN.format("torch_model", "build"),
                      CYCLEGAN.format("flax_model", "build"), "2,3,16,16")
    assert code == 0, out.out[-400:]
    code, out = check(capsys, CYCLEGAN.format("torch_model", "build"),
                      CYCLEGAN.format("flax_model", "build_zero_pad"), "2,3,16,16")
    assert code == 1 and "first divergence at model.0 [padding mode]" in out.out
    code, out = check(capsys, CYCLEGAN.format("torch_model", "build_affine"),
                      CYCLEGAN.format("flax_model", "build_in_eps"), "2,3,16,16", "--json")
    assert code == 1 and json.loads(out.out)["first_divergence"] == "model.2"


def test_weights_in_safetensors_with_integer_buffers_are_read(capsys, tmp_path):
    from safetensors.torch import save_file

    from parity.examples.resnet.torch_model import build

    state = {k: v.contiguous() for k, v in build().state_dict().items()}
    assert state["bn1.num_batches_tracked"].dtype.is_floating_point is False
    save_file(state, str(tmp_path / "net.safetensors"))
    code, out = check(capsys, RESNET.format("torch_model", "build"),
                      RESNET.format("flax_model", "build"), "2,3,32,32",
                      "--weights", str(tmp_path / "net.safetensors"))
    assert code == 0, out.err
