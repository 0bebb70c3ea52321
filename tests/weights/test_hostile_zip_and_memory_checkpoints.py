"""Hostile checkpoints, second round: ambiguous zips, memory amplification, unfilled storages.

Every file here is built by the test itself. Code-carrying files would create a
marker file if their payload ever ran; memory is measured as the peak RSS of a
fresh `dln convert` process, read by that process itself.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from core.config import DLNConfig
from dln.cli import main
from weights.convert import load_checkpoint
from weights.errors import CheckpointError
from weights.files import safetensors_bytes
from weights.spec import tensor_specs
from weights.synthetic import random_torch_state

REPO = Path(__file__).resolve().parents[2]
CFG16 = DLNConfig(dim=16)
PEAK_RSS_LIMIT_MIB = 1024  # the bound SECURITY.md promises for `dln convert`


class RunsSystem:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def _dln16() -> OrderedDict:
    return OrderedDict((k, torch.from_numpy(v)) for k, v in random_torch_state(CFG16, 5).items())


def _torch_bytes(obj, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def _stored_zip(entries: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def _torch_layout(pickle_bytes: bytes) -> list[tuple[str, bytes]]:
    return [("archive/data.pkl", pickle_bytes), ("archive/byteorder", b"little"),
            ("archive/version", b"3\n"), ("archive/.data/serialization_id", b"0" * 40)]


def _same_length(a: bytes, b: bytes) -> tuple[bytes, bytes]:
    """Pad the shorter pickle after its STOP opcode (unpicklers stop reading there)."""
    size = max(len(a), len(b))
    return a + b"\0" * (size - len(a)), b + b"\0" * (size - len(b))


def two_directory_zip(evil: bytes, benign: bytes) -> bytes:
    """[evil zip, its directory][benign zip]: the end record is the benign zip's and
    declares its directory at the offset where the evil directory sits. Python's
    zipfile corrects the offsets by the bytes before the benign zip and reads the
    benign data.pkl; a reader that takes the declared offsets reads the evil one."""
    evil, benign = _same_length(evil, benign)
    evil_zip = _stored_zip(_torch_layout(evil))
    benign_zip = _stored_zip(_torch_layout(benign))
    evil_without_end = evil_zip[:evil_zip.rindex(b"PK\x05\x06")]
    return evil_without_end + benign_zip


def duplicate_name_zip(evil: bytes, benign: bytes) -> bytes:
    entries = _torch_layout(benign)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", evil)
        for name, data in entries:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Duplicate name" is the point
                archive.writestr(name, data)
    return buffer.getvalue()


def two_folder_zip(evil: bytes, benign: bytes) -> bytes:
    return _stored_zip(_torch_layout(benign) + [("other/data.pkl", evil)])


def prefixed_zip(evil: bytes, benign: bytes) -> bytes:
    """The evil zip's local entries (no directory of their own) before a benign zip."""
    evil_zip = _stored_zip(_torch_layout(evil))
    return evil_zip[:evil_zip.index(b"PK\x01\x02")] + _stored_zip(_torch_layout(benign))


def renamed_local_header_zip(evil: bytes, benign: bytes) -> bytes:
    """The central directory says data.pkl; the local header of that entry names
    something else, where the evil pickle lives."""
    data = bytearray(_stored_zip([("archive/data.pkx", evil)] + _torch_layout(benign)[1:]))
    first = data.index(b"PK\x01\x02")  # the first central directory record
    data[first + 46:first + 46 + len(b"archive/data.pkx")] = b"archive/data.pkl"
    return bytes(data)


AMBIGUOUS_ZIPS = {"two zip directories": two_directory_zip,
                  "two entries named data.pkl": duplicate_name_zip,
                  "data.pkl in two folders": two_folder_zip,
                  "bytes before the first local header": prefixed_zip,
                  "local header disagrees with the directory": renamed_local_header_zip}


def _cli(argv, capsys):
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()], err


def test_two_directory_zip_is_hostile_for_the_old_scan(tmp_path):
    """The file class is real: zipfile reads the benign pickle, torch's reader the evil one."""
    marker = tmp_path / "code-ran"
    evil = pickle.dumps({"w": RunsSystem(marker)}, protocol=2)
    benign = pickle.dumps({"w": 1}, protocol=2)
    data = two_directory_zip(evil, benign)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.read("archive/data.pkl").startswith(benign)
    torch_sees = torch._C.PyTorchFileReader(io.BytesIO(data)).get_record("data.pkl")
    assert torch_sees.startswith(evil)
    assert not marker.exists()


@pytest.mark.parametrize("case", sorted(AMBIGUOUS_ZIPS))
def test_ambiguous_zip_is_refused_even_with_torch_allowlist_widened(tmp_path, capsys, case):
    marker = tmp_path / "code-ran"
    evil = pickle.dumps({"w": RunsSystem(marker)}, protocol=2)
    benign = pickle.dumps(OrderedDict(), protocol=2)
    src = tmp_path / "evil.pth"
    src.write_bytes(AMBIGUOUS_ZIPS[case](evil, benign))
    out = tmp_path / "out"
    out.mkdir()
    with torch.serialization.safe_globals([os.system]):  # only the static gate can stop it
        code, lines, err = _cli(["convert", str(src), str(out / "x.safetensors")], capsys)
        with pytest.raises(CheckpointError, match="refused|not a readable"):
            load_checkpoint(src)
    assert not marker.exists(), f"{case}: the payload ran"
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert list(out.iterdir()) == []


def test_a_genuine_zip_is_not_called_ambiguous(tmp_path):
    path = tmp_path / "good.pth"
    path.write_bytes(_torch_bytes(_dln16()))
    assert load_checkpoint(path).config.dim == 16


# ---- memory amplification ----------------------------------------------------------------
def _expanded(shape) -> torch.Tensor:
    return torch.ones(1).expand(*shape)  # one stored float, a huge declared tensor


def amplifying_files(folder: Path) -> dict[str, Path]:
    """Small files that declare gigabytes: stride-0 expands, under unknown keys or as a
    huge DLN, in both torch formats, and header-declared sizes in safetensors."""
    files = {}
    unknown = _dln16()
    unknown["huge"] = _expanded((32768, 32768))            # 4 GiB as float32
    dim_4096 = SimpleNamespace(dim=4096, input_channels=4)  # past MAX_DIM: DLNConfig refuses
    huge_dln = OrderedDict((s.torch_name, _expanded(s.torch_shape))
                           for s in tensor_specs(dim_4096))  # 2.9e9 values, 11 GiB
    for name, state in (("unknown key", unknown), ("huge DLN", huge_dln)):
        for legacy in (False, True):
            path = folder / f"{name.replace(' ', '_')}{'_legacy' if legacy else ''}.pth"
            path.write_bytes(_torch_bytes(state, legacy=legacy))
            files[f"{name}{', legacy' if legacy else ''}"] = path
    small = safetensors_bytes({"x": np.zeros(1, np.float32)}, {})
    size = int.from_bytes(small[:8], "little")
    header = json.loads(small[8:8 + size])
    header["x"]["shape"] = [32768, 32768]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path = folder / "declared_huge.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text + small[8 + size:])
    files["safetensors header"] = path
    # a real dim-16 file whose metadata claims a far wider network: its implied shapes
    # are computed by arithmetic and compared with the declared ones, never allocated
    ckpt16 = {k: v.numpy() for k, v in _dln16().items()}
    for dim in (16000, 1024):
        from weights.convert import checkpoint_from_torch_state, safetensors_metadata
        small = checkpoint_from_torch_state(ckpt16, CFG16)
        meta = safetensors_metadata(small)
        meta["config"] = json.dumps({**json.loads(meta["config"]), "dim": dim})
        path = folder / f"claims_dim_{dim}.safetensors"
        path.write_bytes(safetensors_bytes(small.flax_params, meta))
        files[f"safetensors claiming dim {dim}"] = path
    legacy_meta = _dln16()
    legacy_meta._metadata = OrderedDict(  # type: ignore[attr-defined]
        [("", {"version": 1, "dln_config": json.dumps({"dim": 1024})})])
    path = folder / "pth_claiming_dim_1024.pth"
    path.write_bytes(_torch_bytes(legacy_meta))
    files["pth claiming dim 1024"] = path
    # object-per-byte bloat: a pickle of millions of empty dicts, each memoised
    bloat = folder / "many_objects.pth"
    bloat.write_bytes(b"\x80\x02]" + b"}\x94a" * 2_000_000 + b".")
    files["pickle of 2 million objects"] = bloat
    text = b'{"pad":[' + b"0," * 4_500_000 + b'0]}'
    text += b" " * (-len(text) % 8)
    big_header = folder / "big_header.safetensors"
    big_header.write_bytes(len(text).to_bytes(8, "little") + text)
    files["9 MB safetensors header"] = big_header
    return files


# The child reads its own peak RSS (VmHWM of its address space, new at exec). Not
# ru_maxrss: Linux carries the forking parent's high-water mark (pytest's, GBs late in the
# suite) into the child's ru_maxrss across exec, so that figure measures the parent.
CHILD = """
import contextlib, io, json, sys
from dln.cli import main

def vm_hwm_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024

results = {}
for name, src, dst in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["convert", src, dst])
    results[name] = [code, err.getvalue()]
peak_mib = vm_hwm_mib()
control = bytearray(300 << 20)  # 300 MiB touched: proves the measurement sees allocations
control[::4096] = b"x" * len(control[::4096])
print(json.dumps({"results": results, "peak_mib": peak_mib,
                  "control_mib": vm_hwm_mib() - peak_mib}))
"""


def test_amplifying_checkpoints_are_refused_with_peak_rss_under_1_gib(tmp_path):
    src_dir, out = tmp_path / "src", tmp_path / "out"
    src_dir.mkdir()
    out.mkdir()
    files = amplifying_files(src_dir)
    assert all(p.stat().st_size < 10_000_000 for p in files.values())  # small files...
    jobs = [[name, str(path), str(out / (f"x{i}.pth" if path.suffix == ".safetensors"
                                        else f"x{i}.safetensors"))]
            for i, (name, path) in enumerate(sorted(files.items()))]
    env = {**os.environ, "DLN_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(jobs)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (code, err) in report["results"].items():
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, (name, err)
    assert list(out.iterdir()) == []
    assert report["control_mib"] > 250, report  # the meter works
    assert report["peak_mib"] < PEAK_RSS_LIMIT_MIB, f"peak RSS {report['peak_mib']:.0f} MiB"
    print(f"peak RSS of the convert process: {report['peak_mib']:.0f} MiB")


def test_unknown_keys_are_never_materialised(tmp_path, monkeypatch):
    from weights import torch_reader

    state = _dln16()
    state["extra.weight"] = torch.ones(3)
    path = tmp_path / "extra.pth"
    path.write_bytes(_torch_bytes(state))
    built = []
    real = torch_reader.Declared.materialise
    monkeypatch.setattr(torch_reader.Declared, "materialise",
                        lambda self, name, t: built.append(name) or real(self, name, t))
    with pytest.raises(CheckpointError, match="unexpected: extra.weight"):
        load_checkpoint(path)
    assert built == []


# ---- storages declared but not fully stored ----------------------------------------------
def _legacy_parts(data: bytes) -> tuple[list[int], list]:
    """Byte offsets of the five pickles' ends, and the storage-key list."""
    stream, ends = io.BytesIO(data), []
    for _ in range(5):
        for _op in pickletools.genops(stream):
            pass
        ends.append(stream.tell())
    keys = pickle.loads(data[ends[3]:ends[4]])
    return ends, keys


def legacy_with_unlisted_storage() -> bytes:
    """A legacy file whose first storage is declared by the pickle but left out of the
    storage list and the data: torch would allocate it and never fill it."""
    data = _torch_bytes(_dln16(), legacy=True)
    ends, keys = _legacy_parts(data)
    count = struct.unpack_from("<q", data, ends[4])[0]
    rest = data[ends[4] + 8 + 4 * count:]  # float32 storages
    return data[:ends[3]] + pickle.dumps(keys[1:], protocol=2) + rest


def legacy_with_short_record() -> bytes:
    data = bytearray(_torch_bytes(_dln16(), legacy=True))
    ends, _ = _legacy_parts(bytes(data))
    count = struct.unpack_from("<q", data, ends[4])[0]
    struct.pack_into("<q", data, ends[4], count - 1)
    return bytes(data)


def zip_without_a_storage_record() -> bytes:
    data = _torch_bytes(_dln16())
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        entries = [(i.filename, archive.read(i)) for i in archive.infolist()
                   if i.filename != "archive/data/0"]
    return _stored_zip(entries)


def zip_with_a_short_record() -> bytes:
    data = _torch_bytes(_dln16())
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        entries = [(i.filename, archive.read(i)[:-4] if i.filename == "archive/data/0"
                    else archive.read(i)) for i in archive.infolist()]
    return _stored_zip(entries)


UNFILLED = {"legacy: storage missing from the storage list": legacy_with_unlisted_storage,
            "legacy: record shorter than declared": legacy_with_short_record,
            "zip: storage record missing": zip_without_a_storage_record,
            "zip: storage record shorter than declared": zip_with_a_short_record}


@pytest.mark.parametrize("case", sorted(UNFILLED))
def test_storage_not_fully_stored_is_refused(tmp_path, capsys, case):
    src = tmp_path / "unfilled.pth"
    src.write_bytes(UNFILLED[case]())
    out = tmp_path / "out"
    out.mkdir()
    code, lines, err = _cli(["convert", str(src), str(out / "x.safetensors")], capsys)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert str(src) in lines[0] and "storage" in lines[0], lines[0]
    assert list(out.iterdir()) == []


def test_legacy_unlisted_storage_names_the_unfilled_memory(tmp_path):
    src = tmp_path / "unfilled.pth"
    src.write_bytes(legacy_with_unlisted_storage())
    with pytest.raises(CheckpointError, match="declared but never stored"):
        load_checkpoint(src)


def test_genuine_legacy_file_loads_bit_for_bit(tmp_path):
    state = _dln16()
    src = tmp_path / "legacy.pth"
    src.write_bytes(_torch_bytes(state, legacy=True))
    ckpt = load_checkpoint(src)
    for name, value in state.items():
        assert ckpt.torch_state[name].tobytes() == value.numpy().tobytes(), name


def test_a_big_endian_zip_reads_the_same_values(tmp_path):
    """torch.save on a big-endian machine stores byteorder 'big' and swapped storages."""
    state = _dln16()
    data = _torch_bytes(state)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        entries = []
        for info in archive.infolist():
            blob = archive.read(info)
            if "/data/" in info.filename:
                blob = np.frombuffer(blob, "<f4").astype(">f4").tobytes()
            elif info.filename.endswith("/byteorder"):
                blob = b"big"
            entries.append((info.filename, blob))
    src = tmp_path / "big_endian.pth"
    src.write_bytes(_stored_zip(entries))
    ckpt = load_checkpoint(src)
    for name, value in state.items():
        assert ckpt.torch_state[name].tobytes() == value.numpy().tobytes(), name
