"""Hostile Orbax checkpoint folders: each is one line and exit 2 from `dln convert`, nothing is
written, nothing hangs, and nothing the tensor table does not expect is restored."""

from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import pytest

from core.config import DLNConfig
from dln.cli import main
from weights.convert import checkpoint_from_torch_state, load_checkpoint, save_checkpoint
from weights.errors import CheckpointError
from weights.synthetic import random_torch_state


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("orbax") / "good.orbax"
    cfg = DLNConfig(dim=16)
    save_checkpoint(checkpoint_from_torch_state(random_torch_state(cfg, 1), cfg), folder)
    return folder


def _largest_data_file(folder) -> str:
    return max(glob.glob(f"{folder}/ocdbt.process_0/d/*"), key=os.path.getsize)


def _truncate(folder):
    path = _largest_data_file(folder)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def _flip_a_byte(folder):
    path = _largest_data_file(folder)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _edit_tree_metadata(folder, edit):
    path = folder / "_METADATA"
    meta = json.loads(path.read_text())
    edit(meta["tree_metadata"])
    path.write_text(json.dumps(meta))


def _lie_about_a_shape(folder):
    def edit(tree):
        key = next(k for k in tree if "'feat1', 'conv', 'kernel'" in k)
        tree[key]["value_metadata"]["write_shape"] = [3, 3, 4, 4096]
    _edit_tree_metadata(folder, edit)


DAMAGES = {
    "link to /dev/zero inside": (lambda f: os.symlink("/dev/zero", f / "zero"),
                                 "holds a link, zero"),
    "FIFO inside": (lambda f: os.mkfifo(f / "ocdbt.process_0" / "pipe"),
                    "not a regular file (a FIFO"),
    "no _METADATA": (lambda f: os.remove(f / "_METADATA"), "not an Orbax checkpoint folder"),
    "_METADATA not JSON": (lambda f: (f / "_METADATA").write_text("{garbage"),
                           "_METADATA is not JSON"),
    "_METADATA lies about a shape": (_lie_about_a_shape, "feat1.conv.kernel"),
    "truncated array file": (_truncate, "array data cannot be read"),
    "a flipped byte in the array data": (_flip_a_byte, "do not match the checksum"),
    "another handler": (lambda f: (f / "_CHECKPOINT_METADATA").write_text(
        json.dumps({"item_handlers": "evil.Handler"})), "not Orbax's StandardCheckpointer"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_every_damaged_folder_is_one_line_exit_2_and_nothing_written(
        damage, good_folder, tmp_path, capsys):
    bad = tmp_path / "bad.orbax"
    shutil.copytree(good_folder, bad)
    make, phrase = DAMAGES[damage]
    make(bad)
    dst = tmp_path / "out.safetensors"
    assert main(["convert", str(bad), str(dst)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and phrase in err and "Traceback" not in err, err
    assert not dst.exists()


def test_a_fifo_a_dangling_link_a_file_and_a_plain_folder_as_the_checkpoint_are_one_line(tmp_path):
    os.mkfifo(tmp_path / "pipe.orbax")
    (tmp_path / "dangling.orbax").symlink_to(tmp_path / "nowhere")
    (tmp_path / "file.orbax").write_bytes(os.urandom(64))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.bin").write_bytes(os.urandom(64))
    for name, phrase in {"pipe.orbax": "not a folder", "dangling.orbax": "dangling link",
                         "file.orbax": "not a folder", "missing.orbax": "no such folder",
                         "plain": "not an Orbax checkpoint folder"}.items():
        with pytest.raises(CheckpointError, match=phrase):
            load_checkpoint(tmp_path / name)


@pytest.mark.parametrize("limit,value,phrase", [
    ("MAX_ORBAX_FILES", 5, "more than 5 entries"),
    ("MAX_ORBAX_DEPTH", 1, "nested deeper than 1"),
    ("MAX_CHECKPOINT_BYTES", 4096, "more than the 4,096 bytes"),
])
def test_too_many_entries_too_deep_or_too_large_is_refused_while_copying(
        limit, value, phrase, good_folder, monkeypatch):
    import weights.orbax_files as orbax_files

    monkeypatch.setattr(orbax_files, limit, value)
    with pytest.raises(CheckpointError, match=phrase):
        load_checkpoint(good_folder)


def _save_plain(folder, params: dict, metadata: dict | None = None):
    import orbax.checkpoint as ocp

    from weights.nnx_state import state_of_params

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(folder, state_of_params(params), custom_metadata=metadata)
    checkpointer.wait_until_finished()
    checkpointer.close()


def test_misfitting_tensors_are_refused_with_sorted_lists_before_tensorstore_opens_anything(
        tmp_path, monkeypatch):
    import weights.orbax_files as orbax_files
    from weights.convert import orbax_metadata

    cfg = DLNConfig(dim=16)
    ckpt = checkpoint_from_torch_state(random_torch_state(cfg, 1), cfg)
    params = dict(ckpt.flax_params)
    params["feat2.conv.kernel"] = params["feat2.conv.kernel"].transpose(0, 1, 3, 2).copy()
    params["feat_out_1.fusion.fc_0.kernel"] = np.zeros((1 << 12, 1 << 8), np.float32)
    del params["out.bias"], params["feature.act.negative_slope"]
    params["zz.extra"] = np.zeros(3, np.float32)
    _save_plain(tmp_path / "bad.orbax", params, orbax_metadata(ckpt))

    def must_not_run(*args, **kwargs):
        raise AssertionError("Orbax's array metadata was read before the table check")

    monkeypatch.setattr(orbax_files, "_array_metadata", must_not_run)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "bad.orbax")
    text = str(err.value)
    assert "2 missing: feature.act.negative_slope, out.bias" in text
    assert "1 unexpected: zz.extra" in text
    assert ("2 wrong shape: feat2.conv.kernel (3, 3, 16, 32) != expected (3, 3, 32, 16), "
            "feat_out_1.fusion.fc_0.kernel (4096, 256) != expected (16, 1)") in text


def test_rng_state_non_float_and_non_finite_tensors_are_refused_by_name(tmp_path):
    from flax import nnx
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    rngs = nnx.Rngs(0)
    checkpointer.save(tmp_path / "rng.orbax", nnx.state(nnx.Dropout(0.1, rngs=rngs)))
    checkpointer.wait_until_finished()
    checkpointer.close()
    with pytest.raises(CheckpointError, match=r"rngs.*RNG state is not weights"):
        load_checkpoint(tmp_path / "rng.orbax")
    cfg = DLNConfig(dim=16)
    params = checkpoint_from_torch_state(random_torch_state(cfg, 1), cfg).flax_params
    nan = {**params, "feat2.conv.bias": params["feat2.conv.bias"].copy()}
    nan["feat2.conv.bias"][3] = np.inf
    _save_plain(tmp_path / "nan.orbax", nan)
    with pytest.raises(CheckpointError, match=r"'feat2.conv.bias' holds 1 NaN or Inf"):
        load_checkpoint(tmp_path / "nan.orbax")
    ints = {**params, "feat1.conv.kernel": params["feat1.conv.kernel"].astype(np.int32)}
    _save_plain(tmp_path / "int.orbax", ints)
    with pytest.raises(CheckpointError, match=r"'feat1.conv.kernel' has dtype int32"):
        load_checkpoint(tmp_path / "int.orbax")
