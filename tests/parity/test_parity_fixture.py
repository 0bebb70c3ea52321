"""CI fixtures: a stored torch run checks a port where PyTorch cannot be imported.

DLN's committed fixture (package data, parity/presets/dln_dim16.safetensors) holds
weights, inputs and the reference output of every block made by reference_torch
(regenerate: `python -m parity.presets.dln --save-fixture parity/presets/
dln_dim16.safetensors`). Any model's fixture comes from `dln check --save-fixture`; the
checks below run in a process where `import torch` fails."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from dln.cli import main
from parity.engine.fixture import load_fixture
from parity.presets import dln

REPO = Path(__file__).resolve().parents[2]
# `dln` commands (argv lists, JSON) run in one fresh process in which importing torch raises
# ImportError; it prints [[exit code, stdout], ...] as JSON
NO_TORCH = textwrap.dedent("""
    import contextlib, io, json, sys
    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"{name} is blocked in this test process")
    sys.meta_path.insert(0, NoTorch())
    from dln.cli import main
    results = []
    for argv in json.loads(sys.argv[1]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(argv)
        results.append([code, out.getvalue()])
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
    print(json.dumps(results))
""")


def dln_without_torch(*commands: list[str], cwd: Path = REPO) -> list[tuple[int, str]]:
    # -P: the folder (which holds a port.py) is not put on sys.path, as for the `dln` script
    done = subprocess.run([sys.executable, "-P", "-c", NO_TORCH, json.dumps(commands)], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "DLN_NO_PROGRESS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return [tuple(r) for r in json.loads(done.stdout.splitlines()[-1])]


def test_dln_fixture_is_package_data_holding_every_block_of_the_reference_model():
    from reference_torch.model import DLN

    path = dln.default_fixture()
    assert path.is_relative_to(Path(dln.__file__).parent) and path.stat().st_size < 1_000_000
    fixture = load_fixture(path)
    assert fixture.inputs[0].shape == dln.FIXTURE_SHAPE and fixture.chosen
    assert json.loads(fixture.extra["dln_config"])["dim"] == 16
    names = dln.block_names(DLN(dln.FIXTURE_CONFIG))
    assert [m for m, _ in fixture.reference.outputs] == \
        [m for m, _ in fixture.reference.outputs if m in names] + [""]
    assert set(fixture.reference.kinds) == set(names)


NET = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.norm = nn.GroupNorm(2, c)

    def forward(self, x):
        return x + torch.tanh(self.norm(self.conv(x)))


class Net(nn.Module):                 # a network this project has never seen
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(Block(6), Block(6))
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        y = self.blocks(self.stem(x))
        return self.head(y.mean(dim=(2, 3)))


def build():
    torch.manual_seed(3)
    return Net()
"""

PORT = """
import flax.linen as nn
import jax.numpy as jnp

PADDING = ((1, 1), (1, 1))


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.Conv(6, (3, 3), padding=((1, 1), (1, 1)), name="conv")(x)
        return x + jnp.tanh(nn.GroupNorm(num_groups=2, epsilon=1e-5, name="norm")(y))


class Port(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(6, (3, 3), strides=(2, 2), padding=PADDING, name="stem")(x)
        x = Block(name="blocks_1")(Block(name="blocks_0")(x))
        return nn.Dense(4, name="head")(x.mean(axis=(1, 2)))


def build():
    return Port()
"""


def test_fixtures_check_ports_and_name_planted_defects_where_torch_cannot_be_imported(
        tmp_path, capsys):
    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "port.py").write_text(PORT)
    # the classic stride-2 SAME padding: (0, 1) where torch pads (1, 1)
    (tmp_path / "bad_port.py").write_text(PORT.replace('PADDING = ((1, 1), (1, 1))',
                                                       'PADDING = "SAME"'))
    fixture = tmp_path / "net.safetensors"
    assert main(["check", "--torch", f"{tmp_path / 'net.py'}:build", "--flax",
                 f"{tmp_path / 'port.py'}:build", "--input-shape", "2,3,12,12",
                 "--save-fixture", str(fixture)]) == 0
    capsys.readouterr()
    (good, good_out), (bad, bad_out), (dln_fixture, dln_out), (injected, injected_out) = \
        dln_without_torch(["check", "--fixture", str(fixture), "--flax", "port.py:build",
                           "--json"],
                          ["check", "--fixture", str(fixture), "--flax", "bad_port.py:build"],
                          ["parity", "--fixture", "--json"],
                          ["parity", "--fixture", "--inject", "kernel-flip"], cwd=tmp_path)
    report = json.loads(good_out)
    assert good == 0 and report["passed"], report["first_divergence"]
    assert {"stem", "blocks.0.conv", "blocks.1.norm", "head", "prediction"} <= \
        {r["name"] for r in report["rows"] if r["status"] == "pass"}
    assert bad == 1 and "first divergence at stem " in bad_out, bad_out[-1500:]
    # DLN's own fixture, through `dln parity`
    report = json.loads(dln_out)
    assert dln_fixture == 0 and report["passed"] and report["rows_compared"] == 62
    assert injected == 1 and "first divergence at feat1" in injected_out
