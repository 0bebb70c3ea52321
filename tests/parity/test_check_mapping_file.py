"""dln check --mapping FILE: a FIFO, a device or an oversized file is one line at once."""

from __future__ import annotations

import os

import pytest

from parity.engine.check import CheckInputError, load_mapping


def test_mapping_that_is_a_fifo_or_dev_zero_is_one_line_without_reading_forever(tmp_path):
    os.mkfifo(tmp_path / "fifo.json")              # would wait for a writer
    (tmp_path / "zero.json").symlink_to("/dev/zero")  # would fill the memory
    (tmp_path / "ok.json").write_text('{"layer1.0.conv1": "BasicBlock_0/Conv_1"}')
    for name in ("fifo.json", "zero.json"):
        with pytest.raises(CheckInputError, match=rf"--mapping .*{name}: cannot read"):
            load_mapping(str(tmp_path / name))
    assert load_mapping(str(tmp_path / "ok.json")) == {"layer1.0.conv1": "BasicBlock_0/Conv_1"}
