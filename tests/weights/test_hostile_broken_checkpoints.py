"""Broken, foreign and odd checkpoints: one line, exit 2, nothing left behind;
float16 / bfloat16 / float64 tensors are converted and the conversion is stated."""

from __future__ import annotations

import io
import os
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dln.cli import main
from core.config import DLNConfig
from tests.conftest import write_authors_pth
from weights.convert import load_checkpoint
from weights.errors import CheckpointError
from weights.files import safetensors_bytes
from weights.synthetic import random_torch_state

CFG16 = DLNConfig(dim=16)


@pytest.fixture
def state16():
    return random_torch_state(CFG16, seed=11)


@pytest.fixture
def good_files(tmp_path, state16):
    """A dim-16 .pth in the authors' layout, and its conversion to .safetensors."""
    src = tmp_path / "src"
    src.mkdir()
    pth = write_authors_pth(src / "good.pth", state16)
    st = src / "good.safetensors"
    assert main(["convert", str(pth), str(st)]) == 0
    return pth, st


def _refused_by_convert(tmp_path, capsys, src, dst_suffix=".safetensors"):
    """Run dln convert on src; return the one error line after checking the contract."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    dst = out / f"converted{dst_suffix}"
    capsys.readouterr()
    code = main(["convert", str(src), str(dst)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert list(out.iterdir()) == [], f"left behind: {list(out.iterdir())}"
    return lines[0]


def _torch_bytes(obj, **kwargs) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _resnet_like_state() -> dict:
    """Key names, shapes and dtypes of a torchvision ResNet's first layers."""
    return {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.ones(64),
            "bn1.bias": torch.zeros(64), "bn1.running_mean": torch.zeros(64),
            "bn1.running_var": torch.ones(64),
            "bn1.num_batches_tracked": torch.tensor(0, dtype=torch.long),
            "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}


def broken_pth_variants(good: bytes, state16: dict) -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, a phrase the refusal must contain)."""
    rng = np.random.default_rng(3)
    renamed = {k.replace("conv_Encoder", "encoder"): torch.from_numpy(v)
               for k, v in state16.items()}
    one_d = {k: torch.from_numpy(v) for k, v in state16.items()}
    one_d["feat2.conv.weight"] = one_d["feat2.conv.weight"][:, :, 1:2, :].clone()  # 1x3 kernel
    legacy = _torch_bytes({k: torch.from_numpy(v) for k, v in state16.items()},
                          _use_new_zipfile_serialization=False)
    return {
        "empty": (b"", "empty file"),
        "truncated zip": (good[: len(good) // 2], "not a readable PyTorch checkpoint"),
        "truncated legacy": (legacy[: len(legacy) // 3], "not a readable PyTorch checkpoint"),
        "random bytes": (rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
                         "not a readable PyTorch checkpoint"),
        "zip of text files": (_zip({"readme.txt": b"hello", "notes/a.txt": b"x"}),
                              "without data.pkl"),
        "zip with garbage data.pkl": (_zip({"archive/data.pkl": b"\x80\x02garbage",
                                            "archive/version": b"3\n"}),
                                      "not a readable PyTorch checkpoint"),
        "a tensor, not a dict": (_torch_bytes(torch.zeros(3)), "not a state dict"),
        "an empty dict": (_torch_bytes({}), "not a state dict"),
        "ResNet state dict": (_torch_bytes(_resnet_like_state()), "not a DLN checkpoint"),
        "DLN with renamed keys": (_torch_bytes(renamed), "missing"),
        "DLN with a 1x3 kernel": (_torch_bytes(one_d), "wrong shape"),
        "integer tensor in a DLN": (_torch_bytes({**{k: torch.from_numpy(v) for k, v in
                                                     state16.items()},
                                                  "feat1.conv.bias": torch.zeros(32,
                                                                                 dtype=torch.int32)}),
                                    "dtype int32"),
        "a non-tensor entry": (_torch_bytes({**{k: torch.from_numpy(v) for k, v in
                                                state16.items()}, "epoch": 3}),
                               "not a tensor"),
    }


def test_every_broken_or_foreign_pth_is_one_line_exit_2_nothing_written(tmp_path, capsys,
                                                                         good_files, state16):
    good = good_files[0].read_bytes()
    failures = []
    for name, (data, phrase) in broken_pth_variants(good, state16).items():
        src = tmp_path / "src" / f"{name.replace(' ', '_')}.pth"
        src.write_bytes(data)
        line = _refused_by_convert(tmp_path, capsys, src)
        # file-level problems name the file; a key/shape mismatch found by weights/convert.py
        # names the network it was checked against instead
        names_file = str(src) in line or phrase in ("missing", "wrong shape")
        if phrase not in line or not names_file:
            failures.append(f"{name}: {line}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_in_a_tensor_is_refused_in_both_formats(tmp_path, capsys, state16, bad):
    state = dict(state16)
    weight = state["feat_out_2.conv2.conv_Offset.conv.weight"].copy()
    weight[1, 2, 0, 0] = bad
    state["feat_out_2.conv2.conv_Offset.conv.weight"] = weight
    src = write_authors_pth(tmp_path / "src.pth", state)
    line = _refused_by_convert(tmp_path, capsys, src)
    assert "feat_out_2.conv2.conv_Offset.conv.weight" in line and "NaN or Inf" in line, line
    st = tmp_path / "bad.safetensors"
    from safetensors.numpy import save_file

    save_file({"x": np.array([1.0, bad], np.float32)}, str(st), metadata={"format": "x"})
    line = _refused_by_convert(tmp_path, capsys, st, ".pth")
    assert "NaN or Inf" in line, line


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_half_bfloat_and_double_tensors_convert_to_float32_and_say_so(tmp_path, capsys, state16,
                                                                     dtype):
    tensors = {"module." + k: torch.from_numpy(v).to(dtype) for k, v in state16.items()}
    src = tmp_path / "typed.pth"
    torch.save(tensors, src)
    dst = tmp_path / "typed.safetensors"
    assert main(["convert", str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    name = str(dtype).replace("torch.", "")
    assert f"converted 125 {name} tensor(s) to float32" in out, out
    ckpt = load_checkpoint(dst)
    for key, value in tensors.items():
        expected = value.to(torch.float32).numpy()  # torch's own widening / rounding
        got = ckpt.torch_state[key[len("module."):]]
        assert got.dtype == np.float32 and got.tobytes() == expected.tobytes(), key


def test_float64_note_tells_exact_from_rounded(tmp_path, state16):
    exact = {k: torch.from_numpy(v.astype(np.float64)) for k, v in state16.items()}
    torch.save(exact, tmp_path / "exact.pth")
    assert any("exact" in n for n in load_checkpoint(tmp_path / "exact.pth").notes)
    rounded = dict(exact)
    rounded["feat1.conv.bias"] = rounded["feat1.conv.bias"] + 1e-12
    torch.save(rounded, tmp_path / "rounded.pth")
    notes = load_checkpoint(tmp_path / "rounded.pth").notes
    assert any("rounded to nearest" in n and "2^-24" in n for n in notes), notes


def test_float64_beyond_float32_range_is_refused(tmp_path, capsys, state16):
    tensors = {k: torch.from_numpy(v.astype(np.float64)) for k, v in state16.items()}
    tensors["feat1.conv.bias"][0] = 1e300
    torch.save(tensors, tmp_path / "huge.pth")
    line = _refused_by_convert(tmp_path, capsys, tmp_path / "huge.pth")
    assert "beyond the float32 range" in line, line


def _header_of(data: bytes) -> dict:
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + size])


def broken_safetensors_variants(good: bytes) -> dict[str, tuple[bytes, str]]:
    header = _header_of(good)
    size = int.from_bytes(good[:8], "little")
    body = good[8 + size:]

    def with_header(h: dict) -> bytes:
        text = json.dumps(h).encode()
        text += b" " * (-len(text) % 8)
        return len(text).to_bytes(8, "little") + text + body

    wrong_shape = json.loads(json.dumps(header))
    kernel = wrong_shape["feat1.conv.kernel"]
    kernel["shape"] = [kernel["shape"][0], kernel["shape"][1], kernel["shape"][3],
                       kernel["shape"][2]]  # same byte count, transposed shape
    no_meta = {k: v for k, v in header.items() if k != "__metadata__"}
    bad_config = json.loads(json.dumps(header))
    bad_config["__metadata__"]["config"] = '{"gamma": "bright"}'
    bad_offsets = json.loads(json.dumps(header))
    bad_offsets["feat1.conv.bias"]["data_offsets"][1] += 4
    bias = json.dumps(header["feat1.conv.bias"])  # named twice; Python's json keeps the last
    twice = json.dumps(header).replace("{", '{"feat1.conv.bias": ' + bias + ", ", 1).encode()
    twice += b" " * (-len(twice) % 8)
    return {
        "tensor named twice": (len(twice).to_bytes(8, "little") + twice + body, "appears twice"),
        "header size past the end": (len(good).to_bytes(8, "little") + good[8:],
                                     "header size"),
        "header not JSON": (good[:8] + b"{" * size + body, "corrupt header"),
        "header a JSON list": (with_header([1, 2]), "not a JSON object"),  # type: ignore[arg-type]
        "only 5 bytes": (good[:5], "8-byte header size"),
        "offsets overlap": (with_header(bad_offsets), "not a readable safetensors file"),
        "wrong shape": (with_header(wrong_shape), "wrong shape"),
        "missing metadata": (with_header(no_meta), "metadata lacks"),
        "invalid stored config": (with_header(bad_config), "stored network config is invalid"),
        "truncated body": (good[: len(good) - 100], "not a readable safetensors file"),
    }


def test_every_broken_safetensors_is_one_line_exit_2_nothing_written(tmp_path, capsys,
                                                                     good_files):
    good = good_files[1].read_bytes()
    failures = []
    for name, (data, phrase) in broken_safetensors_variants(good).items():
        src = tmp_path / "src" / f"{name.replace(' ', '_')}.safetensors"
        src.write_bytes(data)
        line = _refused_by_convert(tmp_path, capsys, src, ".pth")
        if phrase not in line:
            failures.append(f"{name}: {line}")
    assert not failures, "\n".join(failures)


def test_bfloat16_safetensors_widen_exactly(tmp_path, good_files):
    """safetensors.numpy cannot hold bfloat16; the loader widens the raw bits itself."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    st = good_files[1]
    with safe_open(str(st), framework="pt") as fh:
        metadata = fh.metadata()
        tensors = {k: fh.get_tensor(k).to(torch.bfloat16) for k in fh.keys()}
    dst = tmp_path / "bf16.safetensors"
    save_file(tensors, str(dst), metadata=metadata)
    ckpt = load_checkpoint(dst)
    assert any("bfloat16" in n and "exact" in n for n in ckpt.notes), ckpt.notes
    for key, value in tensors.items():
        expected = value.to(torch.float32).numpy()
        assert ckpt.flax_params[key].tobytes() == expected.tobytes(), key


def test_written_safetensors_reads_back_through_the_library_with_sorted_metadata():
    data = safetensors_bytes({"b": np.ones((2, 3), np.float32), "a": np.float32(2.5)},
                             {"z": "1", "a": "2"})
    from safetensors.numpy import load

    back = load(data)
    assert back["a"].shape == () and back["a"] == np.float32(2.5)
    np.testing.assert_array_equal(back["b"], np.ones((2, 3), np.float32))
    assert list(_header_of(data)["__metadata__"]) == ["a", "z"]


# Run in a fresh process, and measure its peak RSS (VmHWM) from just before the refusal:
# writing 5 to /proc/self/clear_refs resets the high-water mark to the current RSS (Linux),
# so neither earlier tests nor the imports' transient peaks can hide an allocation; a good
# checkpoint is converted first, so that the lazy imports (torch, safetensors) are done.
# The control afterwards (the mark reset again, 300 MiB touched) shows the measurement
# sees an allocation of that size.
_PEAK_RSS_CHILD = """
import json, re, sys
from dln.cli import main
def mib(key):
    return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return mib("VmRSS")
assert main(["convert", sys.argv[3], sys.argv[4]]) == 0
base = reset_peak()
code = main(["convert", sys.argv[1], sys.argv[2]])
grown = mib("VmHWM") - base
base = reset_peak()
control = bytearray(300 * 2**20)
control[::4096] = b"\\x01" * len(control[::4096])
print(json.dumps({"code": code, "grown_mib": grown, "control_mib": mib("VmHWM") - base}))
"""


def test_zip_bomb_is_refused_before_anything_is_unpacked(tmp_path, good_files):
    """An entry whose zip directory declares 1.5 GB unpacked: torch would allocate that."""
    import os
    import struct
    import subprocess
    import sys

    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good_files[0].read_bytes())) as source, \
            zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            out.writestr(info.filename, source.read(info))
        out.writestr("archive/data/999", bytes(1000))
    data = bytearray(buffer.getvalue())
    entry = data.rindex(b"PK\x01\x02")  # the last central-directory record: data/999
    data[entry + 24:entry + 28] = struct.pack("<I", 1_500_000_000)  # its unpacked size
    (tmp_path / "bomb.pth").write_bytes(bytes(data))
    dst = tmp_path / "out" / "converted.safetensors"
    dst.parent.mkdir()
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS_CHILD, str(tmp_path / "bomb.pth"),
                           str(dst), str(good_files[0]), str(tmp_path / "warm.safetensors")],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, DLN_NO_PROGRESS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert measured["code"] == 2 and len(lines) == 1, done.stderr
    assert "zip bomb" in lines[0] and "1,500," in lines[0], lines
    assert list(dst.parent.iterdir()) == [], "left behind a file"
    assert measured["control_mib"] >= 250, f"the measurement missed a 300 MiB control: {measured}"
    assert measured["grown_mib"] < 100, f"peak memory grew by {measured['grown_mib']:.0f} MiB"


def test_a_checkpoint_with_the_other_format_s_suffix_is_named_as_such(tmp_path, good_files):
    pth, st = good_files
    (tmp_path / "really_pth.safetensors").write_bytes(pth.read_bytes())
    (tmp_path / "really_safetensors.pth").write_bytes(st.read_bytes())
    with pytest.raises(CheckpointError, match=r"looks like a PyTorch checkpoint \(name it .pth"):
        load_checkpoint(tmp_path / "really_pth.safetensors")
    with pytest.raises(CheckpointError, match=r"it is a safetensors file: name it .safetensors"):
        load_checkpoint(tmp_path / "really_safetensors.pth")


def test_directory_dangling_link_and_missing_file_are_one_line_errors(tmp_path):
    (tmp_path / "dir.pth").mkdir()
    (tmp_path / "dangling.pth").symlink_to(tmp_path / "nowhere.pth")
    for name, phrase in {"dir.pth": "not a regular file", "dangling.pth": "dangling",
                         "missing.pth": "no such file"}.items():
        with pytest.raises(CheckpointError, match=phrase):
            load_checkpoint(tmp_path / name)


def test_a_fifo_swapped_in_after_the_name_was_checked_is_one_line_not_a_hang(
        tmp_path, monkeypatch, outcome_without_blocking):
    """The checks on the name (exists, is_file) pass for a regular file; here the name
    is a FIFO by the time it is opened. The open must not wait for a writer."""
    from weights.tensor_checks import read_checkpoint_bytes

    fifo = tmp_path / "swapped.safetensors"
    os.mkfifo(fifo)
    monkeypatch.setattr(Path, "is_file", lambda self: True)
    monkeypatch.setattr(Path, "stat", lambda self, **kw: os.stat(tmp_path))  # any small size
    error = outcome_without_blocking(read_checkpoint_bytes, fifo,
                                     "reading a FIFO named as a checkpoint")
    assert isinstance(error, CheckpointError) and "not a regular file" in str(error)
    assert "\n" not in str(error)
