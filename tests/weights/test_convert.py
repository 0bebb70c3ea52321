"""`dln convert`: every accepted layout, strictness, layout rules, round trips."""

import json

import numpy as np
import pytest
import torch

from dln.cli import main
from core.config import DLNConfig
from tests.conftest import write_authors_pth
from weights.convert import load_checkpoint
from weights.files import read_safetensors_metadata, sha256_of
from weights.spec import tensor_specs


@pytest.mark.parametrize("prefix,wrap", [("module.", None), ("", None), ("", "state_dict"),
                                         ("module.", "model")])
def test_every_authors_layout_converts_to_flax_names_and_layouts(tmp_path, random_state_64,
                                                                   prefix, wrap):
    src = write_authors_pth(tmp_path / "a.pth", random_state_64, prefix, wrap)
    dst = tmp_path / "a.safetensors"
    assert main(["convert", str(src), str(dst)]) == 0
    from safetensors.numpy import load_file

    params = load_file(str(dst))
    specs = tensor_specs(DLNConfig())
    assert set(params) == {s.flax_name for s in specs}
    k = random_state_64["feat1.conv.weight"]  # OIHW (128, 4, 3, 3)
    np.testing.assert_array_equal(params["feat1.conv.kernel"], k.transpose(2, 3, 1, 0))
    fc = random_state_64["feat_out_2.fusion.fc.0.weight"]  # (out 8, in 128)
    np.testing.assert_array_equal(params["feat_out_2.fusion.fc_0.kernel"], fc.T)
    slope = random_state_64["feature.act.weight"]
    assert params["feature.act.negative_slope"].shape == ()
    assert params["feature.act.negative_slope"] == slope[0]
    meta = read_safetensors_metadata(dst)
    assert meta["parameter_count"] == "700586"
    assert meta["source_sha256"] == sha256_of(src)
    assert DLNConfig.from_json(meta["config"]) == DLNConfig()


def test_round_trip_pth_safetensors_pth_is_bit_exact_and_loads_in_authors_class(
        tmp_path, authors_pth_64, random_state_64):
    st, back = tmp_path / "a.safetensors", tmp_path / "back.pth"
    assert main(["convert", str(authors_pth_64), str(st)]) == 0
    assert main(["convert", str(st), str(back), "--dataparallel"]) == 0
    original = torch.load(authors_pth_64, weights_only=True)
    again = torch.load(back, weights_only=True)
    assert list(again) == list(original)
    for key in original:
        assert original[key].numpy().tobytes() == again[key].numpy().tobytes(), key
    from reference_torch.model import DLN

    model = torch.nn.DataParallel(DLN(DLNConfig()))
    model.load_state_dict(again, strict=True)  # the authors load their files this way


def test_missing_unexpected_and_misshapen_keys_exit_2_listing_them_and_write_nothing(
        tmp_path, random_state_64, capsys):
    state = dict(random_state_64)
    del state["feat_out_3.conv2.conv_Offset.conv.bias"]
    state["extra.weight"] = np.zeros(3, np.float32)
    state["feature.conv.bias"] = np.zeros(65, np.float32)
    src = write_authors_pth(tmp_path / "bad.pth", state)
    dst = tmp_path / "bad.safetensors"
    assert main(["convert", str(src), str(dst)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "1 missing: feat_out_3.conv2.conv_Offset.conv.bias" in err
    assert "1 unexpected: extra.weight" in err
    assert "feature.conv.bias (65,) != expected (64,)" in err
    assert list(tmp_path.iterdir()) == [src]


def test_converted_file_reports_the_parameter_count(tmp_path, authors_pth_64, capsys):
    assert main(["convert", str(authors_pth_64), str(tmp_path / "x.safetensors"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parameter_count"] == 700_586 and report["tensors"] == 125


def test_config_is_inferred_from_shapes_and_travels_back_to_pth(tmp_path, authors_pth_16):
    st = tmp_path / "s.safetensors"
    assert main(["convert", str(authors_pth_16), str(st), "--variant", "residual_sign=paper"]) == 0
    cfg = load_checkpoint(st).config
    assert cfg == DLNConfig(dim=16, residual_sign="paper")
    pth = tmp_path / "s.pth"
    assert main(["convert", str(st), str(pth)]) == 0
    assert load_checkpoint(pth).config == cfg


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_checkpoints_checks_run_once_per_load(tmp_path, authors_pth_16, monkeypatch, suffix):
    """The stored config is parsed once and the tensor table compared once, while the
    tensors are only declared (issue of repeated validation: once per load)."""
    import importlib

    convert_module = importlib.import_module("weights.convert")  # the package exports convert()
    src = authors_pth_16
    if suffix == ".safetensors":
        src = tmp_path / "w.safetensors"
        convert_module.convert(authors_pth_16, src)
    calls = {"spec": 0, "config": 0}
    real_check, real_parse = convert_module.check_against_spec, DLNConfig.from_json.__func__

    def counted_check(*args):
        calls["spec"] += 1
        return real_check(*args)

    def counted_parse(cls, text):
        calls["config"] += 1
        return real_parse(cls, text)

    monkeypatch.setattr(convert_module, "check_against_spec", counted_check)
    monkeypatch.setattr(DLNConfig, "from_json", classmethod(counted_parse))
    ckpt = convert_module.load_checkpoint(src)
    assert ckpt.config.dim == 16
    assert calls == {"spec": 1, "config": 1 if suffix == ".safetensors" else 0}
