"""Fuzzing the checkpoint loaders: random bytes and mutated real files.

The only allowed outcomes are a loaded checkpoint or CheckpointError (whose
message is one line); any other exception, a hang or a payload running fails.
Examples are derandomised (the same inputs every run) and kept few for speed.
"""

from __future__ import annotations

import io
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import DLNConfig
from tests.conftest import write_authors_pth
from weights.convert import load_checkpoint
from weights.errors import CheckpointError
from weights.synthetic import random_torch_state

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def real_files(tmp_path_factory):
    """Real dim-16 files in three formats: zip .pth, legacy .pth, .safetensors."""
    import torch

    from dln.cli import main

    folder = tmp_path_factory.mktemp("real")
    state = random_torch_state(DLNConfig(dim=16), seed=2)
    pth = write_authors_pth(folder / "a.pth", state)
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, folder / "legacy.pth",
               _use_new_zipfile_serialization=False)
    assert main(["convert", str(pth), str(folder / "a.safetensors")]) == 0
    return {"zip": pth.read_bytes(), "legacy": (folder / "legacy.pth").read_bytes(),
            "safetensors": (folder / "a.safetensors").read_bytes()}


def _load_outcome(path) -> str:
    try:
        load_checkpoint(path)
    except CheckpointError as err:
        assert "\n" not in str(err), str(err)
        return "refused"
    return "loaded"


def mutate(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    """Apply (kind, position, value) edits: flip a byte, cut the tail, insert, delete."""
    out = bytearray(data)
    for kind, position, value in edits:
        if not out:
            break
        at = position % len(out)
        if kind == "set":
            out[at] = value
        elif kind == "cut":
            del out[at:]
        elif kind == "insert":
            out[at:at] = bytes([value]) * (1 + value % 16)
        else:
            del out[at:at + 1 + value % 64]
    return bytes(out)


EDITS = st.lists(st.tuples(st.sampled_from(["set", "set", "set", "cut", "insert", "delete"]),
                           st.integers(0, 1 << 30), st.integers(0, 255)), min_size=1, max_size=6)


@FUZZ
@given(data=st.binary(max_size=3000), suffix=st.sampled_from([".pth", ".safetensors"]))
def test_random_bytes_are_loaded_or_refused_never_crash(tmp_path, data, suffix):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(data)
    assert _load_outcome(path) == "refused"


@FUZZ
@given(fmt=st.sampled_from(["zip", "legacy", "safetensors"]), edits=EDITS)
def test_mutated_real_files_are_loaded_or_refused_never_crash(tmp_path, real_files, fmt, edits):
    path = tmp_path / ("m.safetensors" if fmt == "safetensors" else "m.pth")
    path.write_bytes(mutate(real_files[fmt], edits))
    _load_outcome(path)


@FUZZ
@given(edits=EDITS)
def test_mutated_data_pkl_inside_a_valid_zip_is_loaded_or_refused(tmp_path, real_files, edits):
    """Mutations behind the zip CRCs: the pickle itself reaches both gates."""
    source = zipfile.ZipFile(io.BytesIO(real_files["zip"]))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("data.pkl"):
                data = mutate(data, edits)
            out.writestr(info.filename, data)
    path = tmp_path / "z.pth"
    path.write_bytes(buffer.getvalue())
    _load_outcome(path)
