"""Checkpoints of dtypes newer than the allowlist's typed storages: refused in one line
that says so, not called malicious; complex and integer weights named by dtype."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from core.config import DLNConfig
from weights.convert import load_checkpoint
from weights.errors import CheckpointError
from weights.synthetic import random_torch_state

KEY = "feat1.conv.weight"


@pytest.fixture(scope="module")
def state16():
    return OrderedDict((k, torch.as_tensor(np.asarray(v)))
                       for k, v in random_torch_state(DLNConfig(dim=16), 7).items())


@pytest.mark.parametrize("dtype, phrase", [
    (torch.float8_e4m3fn, "float8, uint16-64"), (torch.float8_e5m2, "float8, uint16-64"),
    (torch.uint16, "float8, uint16-64"), (torch.complex64, "dtype complex64"),
    (torch.int32, "dtype int32")])
def test_a_pth_with_a_weight_of_an_unread_dtype_is_one_line_naming_why(tmp_path, state16,
                                                                       dtype, phrase):
    state = OrderedDict(state16)
    state[KEY] = state16[KEY].to(dtype)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    line = str(info.value)
    assert phrase in line and "w.pth" in line and "\n" not in line
    assert "malicious" not in line
