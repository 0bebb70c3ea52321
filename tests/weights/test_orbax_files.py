"""Orbax checkpoint folders: `dln convert` writes and reads them, round trips are bit-exact,
folders saved by a plain NNX user load too, and nothing but an Orbax folder is replaced."""

from __future__ import annotations

import os

import numpy as np
import pytest

from core.config import DLNConfig
from dln.cli import main
from weights.convert import load_checkpoint
from weights.errors import CheckpointError


def test_round_trip_pth_orbax_safetensors_pth_is_bit_exact(tmp_path, authors_pth_16, capsys):
    from weights.files import load_pth

    orbax, st, back = tmp_path / "w.orbax", tmp_path / "w.safetensors", tmp_path / "back.pth"
    assert main(["convert", str(authors_pth_16), str(orbax)]) == 0
    assert "wrote" in capsys.readouterr().out and orbax.is_dir()
    assert main(["convert", str(orbax), str(st)]) == 0
    assert main(["convert", str(st), str(back), "--dataparallel"]) == 0
    original, _ = load_pth(authors_pth_16)
    returned, _ = load_pth(back)
    assert sorted(original) == sorted(returned) and len(original) == 125
    for name, value in original.items():
        assert value.tobytes() == returned[name].tobytes(), name
    # and the folder itself holds the very tensors, with the config and its checksum
    ckpt = load_checkpoint(orbax)
    assert ckpt.config == DLNConfig(dim=16)
    assert ckpt.parameter_count == load_checkpoint(authors_pth_16).parameter_count


def test_a_folder_a_plain_nnx_user_saved_loads_with_its_config_read_from_the_shapes(tmp_path):
    """No project metadata: `StandardCheckpointer().save(dir, nnx.state(model))` of an NNX
    DLN, here as the Param state of dotted names (what such a model's state holds)."""
    import orbax.checkpoint as ocp

    from weights.convert import checkpoint_from_torch_state
    from weights.nnx_state import state_of_params
    from weights.synthetic import random_torch_state

    cfg = DLNConfig(dim=16, brightness=False)
    params = checkpoint_from_torch_state(random_torch_state(cfg, 2), cfg).flax_params
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "mine", state_of_params(params))
    checkpointer.wait_until_finished()
    checkpointer.close()
    ckpt = load_checkpoint(tmp_path / "mine", {"residual_sign": "paper"})
    assert ckpt.config == cfg.replace(residual_sign="paper")
    assert all(ckpt.flax_params[k].tobytes() == v.tobytes() for k, v in params.items())


def test_overwrite_replaces_only_an_orbax_folder_never_a_file_or_another_folder(
        tmp_path, authors_pth_16, capsys):
    dst = tmp_path / "w.orbax"
    assert main(["convert", str(authors_pth_16), str(dst)]) == 0
    assert main(["convert", str(authors_pth_16), str(dst)]) == 2  # exists
    assert "exists (use --overwrite" in capsys.readouterr().err
    assert main(["convert", str(authors_pth_16), str(dst), "--overwrite"]) == 0
    folder = tmp_path / "notes.orbax"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep me")
    file = tmp_path / "file.orbax"
    file.write_text("keep me too")
    for victim in (folder, file):
        assert main(["convert", str(authors_pth_16), str(victim), "--overwrite"]) == 2
        assert "not an Orbax checkpoint folder" in capsys.readouterr().err
    assert (folder / "mine.txt").read_text() == "keep me" and file.read_text() == "keep me too"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [authors_pth_16.name, "w.orbax", "notes.orbax", "file.orbax"])  # no temporary left


def test_a_write_that_fails_verification_leaves_no_folder_and_no_temporary(
        tmp_path, authors_pth_16, monkeypatch, capsys):
    import weights.orbax_files as orbax_files

    def damaged(path, *args, **kwargs):
        arrays, metadata = real(path, *args, **kwargs)
        arrays["out.bias"] = arrays["out.bias"] + 1
        return arrays, metadata

    real = orbax_files.load_orbax
    monkeypatch.setattr(orbax_files, "load_orbax", damaged)
    assert main(["convert", str(authors_pth_16), str(tmp_path / "w.orbax")]) == 2
    assert "re-read tensor 'out.bias' differs" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == [authors_pth_16.name]


def test_an_existing_plain_folder_is_not_a_destination_and_same_format_is_refused(
        tmp_path, authors_pth_16):
    from weights.convert import convert

    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint name"):
        convert(authors_pth_16, tmp_path)
    convert(authors_pth_16, tmp_path / "a.orbax")
    with pytest.raises(CheckpointError, match="convert goes between"):
        convert(tmp_path / "a.orbax", tmp_path / "b.orbax")
    assert np.array_equal(load_checkpoint(tmp_path / "a.orbax").flax_params["feat1.conv.kernel"],
                          load_checkpoint(authors_pth_16).flax_params["feat1.conv.kernel"])


def test_bytes_on_disk_of_the_three_formats_and_of_the_parameters(tmp_path, authors_pth_16):
    from weights.convert import convert
    from weights.sizes import bytes_on_disk, parameter_bytes

    convert(authors_pth_16, tmp_path / "w.orbax")
    convert(authors_pth_16, tmp_path / "w.safetensors")
    params = load_checkpoint(authors_pth_16).parameter_count
    folder = tmp_path / "w.orbax"
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert bytes_on_disk(folder) == sum(p.stat().st_size for p in files) > 0
    (folder / "outside").symlink_to(authors_pth_16)  # a link is not counted
    assert bytes_on_disk(folder) == sum(p.stat().st_size for p in files)
    assert bytes_on_disk(authors_pth_16) == authors_pth_16.stat().st_size
    # safetensors: the float32 values plus one JSON header
    assert 0 < bytes_on_disk(tmp_path / "w.safetensors") - parameter_bytes(params) < 20_000
