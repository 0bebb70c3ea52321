"""`dln check` on any model pair: exit codes, reports, JUnit, planted defects named at
their module; `dln parity --fixture --json`."""

import json
from pathlib import Path
from xml.etree import ElementTree

from dln.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tiny_unet"
TORCH = f"{EXAMPLE / 'torch_model.py'}:build"
FLAX = f"{EXAMPLE / 'flax_model.py'}:build"


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


def test_a_planted_defect_in_a_port_is_named_at_its_module(tmp_path, capsys):
    source = (EXAMPLE / "flax_model.py").read_text()
    planted = source.replace("nn.GroupNorm(num_groups=GROUPS, epsilon=TORCH_NORM_EPS)",
                             "nn.GroupNorm(num_groups=GROUPS)")
    assert planted != source
    (tmp_path / "bad_port.py").write_text(planted)
    code = main(["check", "--torch", TORCH, "--flax", f"{tmp_path / 'bad_port.py'}:build",
                 "--input-shape", "2,3,16,16", "--report", str(tmp_path / "r")])
    assert code == 1
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["first_divergence"] == "bottleneck.norm"
    assert "first divergence" in (tmp_path / "r" / "report.md").read_text()


def test_check_loads_a_weights_file_into_the_torch_model_first(tmp_path, capsys):
    import torch

    from examples.tiny_unet import torch_model

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


def test_a_module_without_converter_rule_and_bad_specs_exit_2(tmp_path, capsys):
    (tmp_path / "rnn.py").write_text(
        "import torch\n\ndef build():\n    return torch.nn.Sequential(torch.nn.GRU(3, 3))\n")
    code = main(["check", "--torch", f"{tmp_path / 'rnn.py'}:build", "--flax", FLAX,
                 "--input-shape", "2,3,16,16"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "GRU" in err and len(err.splitlines()) == 1, err
    for argv in (["--torch", "nope.py:f"], ["--torch", TORCH.replace(":build", ":missing")],
                 ["--torch", TORCH, "--input-shape", "2,x"], ["--torch", TORCH,
                                                              "--mutants", "no-such"]):
        full = ["check", "--flax", FLAX, "--input-shape", "2,3,16,16", *argv]
        assert main(full) == 2, argv
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_parity_fixture_mode_checks_the_committed_fixture_from_the_cli(capsys):
    assert main(["parity", "--fixture", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["blocks_compared"] == 62
    assert main(["parity", "--fixture", "--inject", "kernel-flip"]) == 1
    assert "first divergence at feat1" in capsys.readouterr().out
