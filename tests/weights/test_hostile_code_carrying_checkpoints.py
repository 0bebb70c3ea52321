"""Checkpoints that would run code are refused, and the code never runs.

Every payload, if it ever ran, would create a marker file; each test asserts the
marker is absent afterwards. The builders here are reused by the other security
test files.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import subprocess
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from dln.cli import main
from weights.convert import load_checkpoint
from weights.errors import CheckpointError
from weights.files import load_pth
from weights.pickle_guard import UnsafePickleError, check_torch_file


class RunsSystem:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class RunsExec(RunsSystem):
    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


class RunsEval(RunsSystem):
    def __reduce__(self):
        return builtins.eval, (f"open({self.marker!r}, 'w').close()",)


class RunsPopen(RunsSystem):
    def __reduce__(self):
        return subprocess.Popen, (["touch", self.marker],)


PAYLOADS = {"os.system": RunsSystem, "exec": RunsExec, "eval": RunsEval,
            "subprocess.Popen": RunsPopen}


def small_state() -> OrderedDict:
    """A few DLN-named tensors: enough for a loader to get past the first checks."""
    rng = np.random.default_rng(0)
    return OrderedDict((k, torch.from_numpy(rng.random(s, dtype=np.float32)))
                       for k, s in [("module.feat1.conv.weight", (4, 4, 3, 3)),
                                    ("module.feat1.conv.bias", (4,))])


def evil_torch_save(payload, legacy: bool = False, protocol: int = 2) -> bytes:
    """torch.save of a state dict one of whose values is the payload."""
    state = small_state()
    state["module.feat1.act.weight"] = payload
    buffer = io.BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=not legacy,
               pickle_protocol=protocol)
    return buffer.getvalue()


def evil_handmade_zip(payload) -> bytes:
    """A zip with exactly torch.save's layout whose data.pkl is a plain malicious pickle."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": payload}, protocol=2))
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/.data/serialization_id", "0" * 40)
    return buffer.getvalue()


def evil_stack_global_via_pop(marker) -> bytes:
    """Protocol-4 opcodes whose STACK_GLOBAL operands are not the last two pushes:
    'posix', 'decoy', POP, 'system' -> posix.system after the POP."""
    def text(s):
        b = s.encode()
        return b"\x8c" + bytes([len(b)]) + b  # SHORT_BINUNICODE

    return (b"\x80\x04" + text("posix") + text("decoy") + b"0" + text("system") + b"\x93"
            + text(f"touch '{marker}'") + b"\x85" + b"R" + b".")


def hostile_variants(marker) -> dict[str, bytes]:
    out = {}
    for name, make in PAYLOADS.items():
        out[f"{name}, torch.save zip"] = evil_torch_save(make(marker))
        out[f"{name}, legacy torch.save"] = evil_torch_save(make(marker), legacy=True)
        out[f"{name}, hand-made zip"] = evil_handmade_zip(make(marker))
        out[f"{name}, bare pickle protocol 4"] = pickle.dumps(make(marker), protocol=4)
    out["os.system, torch.save protocol 4"] = evil_torch_save(RunsSystem(marker), protocol=4)
    out["STACK_GLOBAL fed through POP"] = evil_stack_global_via_pop(marker)
    return out


CASES = sorted(hostile_variants("m"))


@pytest.mark.parametrize("case", CASES)
def test_code_carrying_pickle_is_refused_by_the_loader_and_never_runs(tmp_path, case):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    path.write_bytes(hostile_variants(marker)[case])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and "refused" in message and str(path) in message, message
    assert not marker.exists(), f"{case}: the payload ran"


def test_refusal_names_what_the_pickle_asked_for(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(evil_torch_save(RunsPopen(tmp_path / "m"), protocol=4))
    with pytest.raises(CheckpointError, match=r"asks for subprocess\.Popen"):
        load_pth(path)


@pytest.mark.parametrize("case", ["os.system, torch.save zip", "exec, legacy torch.save",
                                  "eval, hand-made zip"])
def test_each_gate_alone_refuses_the_payload(tmp_path, case):
    """Static allowlist walk and torch's weights-only unpickler each refuse on their own."""
    marker = tmp_path / "code-ran"
    data = hostile_variants(marker)[case]
    with pytest.raises(UnsafePickleError):
        check_torch_file(data)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(io.BytesIO(data), weights_only=True)
    assert not marker.exists()


def test_static_gate_holds_even_if_torch_allowlist_was_widened(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    path.write_bytes(evil_torch_save(RunsSystem(marker)))
    with torch.serialization.safe_globals([os.system]):
        with pytest.raises(CheckpointError, match="refused"):
            load_pth(path)
    assert not marker.exists()


def test_benign_legacy_format_file_still_loads(tmp_path):
    torch.save(small_state(), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    state, _ = load_pth(tmp_path / "legacy.pth")
    assert sorted(state) == ["feat1.conv.bias", "feat1.conv.weight"]
    np.testing.assert_array_equal(state["feat1.conv.bias"],
                                  small_state()["module.feat1.conv.bias"].numpy())


def _run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_line_refusal(code, err, marker):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "refused" in lines[0], lines[0]
    assert not marker.exists(), "the payload ran"


@pytest.mark.parametrize("case", ["os.system, torch.save zip", "subprocess.Popen, legacy "
                                  "torch.save", "exec, hand-made zip"])
def test_dln_convert_refuses_with_one_line_exit_2_and_writes_nothing(tmp_path, capsys, case):
    marker = tmp_path / "code-ran"
    src = tmp_path / "evil.pth"
    src.write_bytes(hostile_variants(marker)[case])
    code, _, err = _run_cli(["convert", str(src), str(tmp_path / "out.safetensors")], capsys)
    _assert_one_line_refusal(code, err, marker)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pth"]


def test_dln_enhance_refuses_before_creating_any_output(tmp_path, capsys):
    from PIL import Image

    marker = tmp_path / "code-ran"
    src = tmp_path / "evil.pth"
    src.write_bytes(evil_torch_save(RunsEval(marker)))
    Image.new("RGB", (4, 4), (20, 30, 40)).save(tmp_path / "x.png")
    out = tmp_path / "out"
    code, _, err = _run_cli(["enhance", "--weights", str(src), "--output", str(out),
                             str(tmp_path / "x.png")], capsys)
    _assert_one_line_refusal(code, err, marker)
    assert not out.exists()


def hostile_paths(folder: Path, marker: Path) -> dict[str, Path]:
    """A few code-carrying .pth files in folder, for tests of other commands."""
    paths = {}
    for i, case in enumerate(["os.system, torch.save zip", "exec, legacy torch.save",
                              "eval, hand-made zip"]):
        path = folder / f"evil{i}.pth"
        path.write_bytes(hostile_variants(marker)[case])
        paths[case] = path
    return paths
