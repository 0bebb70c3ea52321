"""`dln check` on any model pair: exit codes, reports, JUnit, planted defects named at
their module, user code run under a guard; `dln parity --fixture --json`."""

import json
from pathlib import Path
from xml.etree import ElementTree

import pytest

from dln.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "parity" / "examples" / "tiny_unet"
TORCH = f"{EXAMPLE / 'torch_model.py'}:build"
FLAX = f"{EXAMPLE / 'flax_model.py'}:build"


def exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse refusing a value
        return stop.code


def test_check_passes_the_example_and_writes_every_report(tmp_path, capsys):
    code = main(["check", "--torch", TORCH, "--flax", FLAX, "--input-shape", "2,3,16,16",
                 "--mutants", "bias-dropped,layernorm-eps", "--report", str(tmp_path / "r"),
                 "--junit", str(tmp_path / "j.xml"), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0, printed["first_divergence"]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["passed"] is True and report["first_divergence"] is None
    assert printed["rows"] == report["rows"]
    mutants = json.loads((tmp_path / "r" / "mutants.json").read_text())
    assert {m["status"] for m in mutants} == {"caught", "not-applicable"}
    assert all(set(m) >= {"defect", "site", "status", "caught", "first_divergence",
                          "max_rel_error"} for m in mutants)
    assert (tmp_path / "r" / "per_layer_error.png").read_bytes()[:4] == b"\x89PNG"
    suite = ElementTree.parse(tmp_path / "j.xml").getroot()
    assert int(suite.get("tests")) == len(report["rows"]) + len(mutants)
    assert int(suite.get("failures")) == 0



def test_mutants_that_cannot_apply_to_the_model_fail_the_check_instead_of_passing(
        tmp_path, capsys):
    # tiny_unet has no LayerNorm: the requested defect has no site, nothing is judged,
    # so the mutation run proves nothing and must not read as a pass
    code = main(["check", "--torch", TORCH, "--flax", FLAX, "--input-shape", "2,3,16,16",
                 "--mutants", "layernorm-eps", "--report", str(tmp_path / "r"),
                 "--junit", str(tmp_path / "j.xml")])
    out = capsys.readouterr().out
    assert code == 1
    assert "not proven by mutation" in out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["passed"] is False and report["mutation_score"] is None
    assert "not proven" in report["mutants_unproven"]
    suite = ElementTree.parse(tmp_path / "j.xml").getroot()
    assert int(suite.get("failures")) == 1

def _planted(tmp_path) -> str:
    source = (EXAMPLE / "flax_model.py").read_text()
    planted = source.replace("nn.GroupNorm(num_groups=GROUPS, epsilon=TORCH_NORM_EPS)",
                             "nn.GroupNorm(num_groups=GROUPS)")
    assert planted != source
    (tmp_path / "bad_port.py").write_text(planted)
    return f"{tmp_path / 'bad_port.py'}:build"


def test_a_planted_defect_in_a_port_is_named_at_its_module(tmp_path, capsys):
    code = main(["check", "--torch", TORCH, "--flax", _planted(tmp_path),
                 "--input-shape", "2,3,16,16", "--report", str(tmp_path / "r")])
    assert code == 1
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["first_divergence"] == "bottleneck.norm"
    assert "first divergence" in (tmp_path / "r" / "report.md").read_text()


def test_mutants_on_a_port_that_already_diverges_report_it_and_do_not_score(tmp_path, capsys):
    code = main(["check", "--torch", TORCH, "--flax", _planted(tmp_path),
                 "--input-shape", "2,3,16,16", "--mutants", "all", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["mutation_score"] is None
    assert "bottleneck.norm" in report["mutants_not_run"]


def test_check_loads_a_weights_file_into_the_torch_model_first(tmp_path, capsys):
    import torch

    from parity.examples.tiny_unet import torch_model

    torch.save(torch_model.build(seed=7).state_dict(), tmp_path / "w.pth")
    code = main(["check", "--torch", TORCH, "--flax", FLAX, "--input-shape", "1,3,16,16",
                 "--weights", str(tmp_path / "w.pth"), "--gradients", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["weights"].endswith("w.pth"), report["first_divergence"]
    assert report["gradients"]["passed"] and len(report["gradients"]["rows"]) == 18
    torch.save({"stem.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    assert main(["check", "--torch", TORCH, "--flax", FLAX, "--input-shape", "1,3,16,16",
                 "--weights", str(tmp_path / "bad.pth")]) == 2
    assert "missing" in capsys.readouterr().err


def test_an_integer_tensor_in_a_weights_file_gets_no_dln_message(tmp_path, capsys):
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"stem.0.weight": np.zeros((8, 3, 3, 3), np.float32),
               "stem.1.num_batches_tracked": np.zeros((), np.int64)},
              str(tmp_path / "w.safetensors"))
    assert main(["check", "--torch", TORCH, "--flax", FLAX, "--input-shape", "1,3,16,16",
                 "--weights", str(tmp_path / "w.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    # the integer counter is left out (not a weight); the file lacks the other tensors
    assert len(err.splitlines()) == 1 and "DLN" not in err and "missing:" in err, err
    assert "num_batches_tracked" not in err.split("missing:")[1], err


def test_a_module_without_converter_rule_and_bad_specs_exit_2(tmp_path, capsys):
    (tmp_path / "rnn.py").write_text(
        "import torch\n\ndef build():\n    return torch.nn.Sequential(torch.nn.GRU(3, 3))\n")
    code = main(["check", "--torch", f"{tmp_path / 'rnn.py'}:build", "--flax", FLAX,
                 "--input-shape", "2,3,16,16"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "GRU" in err and len(err.splitlines()) == 1, err
    for argv in (["--torch", "nope.py:f"], ["--torch", TORCH.replace(":build", ":missing")],
                 ["--torch", TORCH, "--input-shape", "2,x"], ["--torch", TORCH,
                                                              "--mutants", "no-such"],
                 ["--torch", TORCH, "--input-shape", "100000,3,4096,4096"],
                 ["--torch", TORCH, "--seed", "-1"]):
        full = ["check", "--flax", FLAX, "--input-shape", "2,3,16,16", *argv]
        assert exit_code(full) == 2, argv
        assert len(capsys.readouterr().err.strip().splitlines()) == 1, argv


USER_CODE = {
    "raises at import": "raise RuntimeError('broken file')\ndef build():\n    pass\n",
    "exits 0 at import": "import sys\nsys.exit(0)\n",
    "exits in the factory": "import sys\ndef build():\n    sys.exit(0)\n",
    "interrupts the factory": "def build():\n    raise KeyboardInterrupt\n",
    "recurses forever": "def build():\n    return build()\n",
    "returns the wrong type": "def build():\n    return 42\n",
}


@pytest.mark.parametrize("case", list(USER_CODE))
def test_user_code_that_fails_or_exits_is_one_line_and_exit_2(case, tmp_path, capsys):
    (tmp_path / "user.py").write_text(USER_CODE[case])
    assert main(["check", "--torch", f"{tmp_path / 'user.py'}:build", "--flax", FLAX,
                 "--input-shape", "2,3,16,16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "user.py" in err, err


def test_what_user_code_prints_stays_out_of_the_json(tmp_path, capsys):
    source = (EXAMPLE / "flax_model.py").read_text()
    (tmp_path / "noisy.py").write_text(source.replace(
        "def build(width: int = WIDTH) -> TinyUNet:\n",
        "print('hello from the port file')\n\n\ndef build(width: int = WIDTH) -> TinyUNet:\n"
        "    print('building the port')\n"))
    code = main(["check", "--torch", TORCH, "--flax", f"{tmp_path / 'noisy.py'}:build",
                 "--input-shape", "1,3,16,16", "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out)["passed"] and "building the port" in err


def test_save_fixture_refuses_to_replace_a_file(tmp_path, capsys):
    (tmp_path / "f.safetensors").write_text("mine")
    assert main(["check", "--torch", TORCH, "--flax", FLAX, "--input-shape", "1,3,16,16",
                 "--save-fixture", str(tmp_path / "f.safetensors")]) == 2
    assert (tmp_path / "f.safetensors").read_text() == "mine"
    assert "exists" in capsys.readouterr().err


def test_parity_fixture_mode_checks_the_committed_fixture_from_the_cli(capsys):
    assert main(["parity", "--fixture", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["rows_compared"] == 62
    assert main(["parity", "--fixture", "--inject", "kernel-flip"]) == 1
    assert "first divergence at feat1" in capsys.readouterr().out


def test_a_port_whose_dropout_is_in_training_mode_gets_one_line_naming_apply_kwargs(
        tmp_path, capsys):
    (tmp_path / "tm.py").write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(3, 4)\n"
        "        self.drop = torch.nn.Dropout(0.5)\n"
        "    def forward(self, x):\n"
        "        return self.drop(self.fc(x))\n"
        "def build():\n"
        "    return M()\n")
    (tmp_path / "fm.py").write_text(
        "import flax.linen as nn\n"
        "class M(nn.Module):\n"
        "    @nn.compact\n"
        "    def __call__(self, x, train: bool = True):\n"
        "        x = nn.Dense(4, name='fc')(x)\n"
        "        return nn.Dropout(0.5, deterministic=not train)(x)\n"
        "def build():\n"
        "    return M()\n")
    args = ["check", "--torch", f"{tmp_path / 'tm.py'}:build",
            "--flax", f"{tmp_path / 'fm.py'}:build", "--input-shape", "2,3"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--apply-kwargs" in err and "Traceback" not in err
    # with the switch the same pair is compared and passes
    assert main(args + ["--apply-kwargs", '{"train": false}']) == 0
