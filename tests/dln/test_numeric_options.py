"""Every numeric option is range-checked by one module of argparse types (dln/arguments.py):
a value out of range is one line and exit 2 before any work, never a traceback or a hang."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dln import arguments
from dln.arguments import (SEED_LIMIT, decay, int_range, nonnegative_int, positive_float,
                           positive_int, seed)
from dln.cli import main

TYPES = {"positive_int": (positive_int, 1, arguments.MAX_INT),
         "nonnegative_int": (nonnegative_int, 0, arguments.MAX_INT),
         "seed": (seed, 0, SEED_LIMIT - 1), "patch": (int_range(11, 4096), 11, 4096)}


@pytest.mark.parametrize("name", sorted(TYPES))
def test_whole_number_types_take_their_range_and_refuse_the_rest(name):
    parse, low, high = TYPES[name]
    assert parse(str(low)) == low and parse(f"{high:_}") == high
    assert parse(f"{high:,}") == high
    for bad in (str(low - 1), str(high + 1), "1.5", "ten", "", "nan", "inf", "1e999999999",
                "-" + "9" * 5000):
        with pytest.raises(argparse.ArgumentTypeError) as info:
            parse(bad)
        assert "\n" not in str(info.value) and len(str(info.value)) < 200, bad
    if high >= 1000:
        assert parse("1e3") == 1000  # a whole number in exponent form


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(max_size=30), st.integers().map(str),
                      st.floats(allow_nan=True).map(repr),
                      st.from_regex(r"-?[0-9_,]{0,12}(\.[0-9]{0,3})?(e-?[0-9]{1,4})?",
                                    fullmatch=True)))
def test_any_text_is_a_value_in_range_or_one_argparse_error(text):
    for parse, low, high in TYPES.values():
        try:
            value = parse(text)
        except argparse.ArgumentTypeError as err:
            assert "\n" not in str(err)
        else:
            assert isinstance(value, int) and low <= value <= high
    for parse, ok in ((positive_float, lambda v: v > 0), (decay, lambda v: 0 <= v < 1)):
        try:
            value = parse(text)
        except argparse.ArgumentTypeError:
            continue
        assert ok(value) and value == value and abs(value) != float("inf")


def _refused(capsys, argv) -> str:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own errors end by SystemExit
        code = stop.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (argv, err)
    return lines[0]


@pytest.mark.parametrize("argv, phrase", [
    (["train", "--seed=-1"], "--seed"),
    (["train", "--seed", "4294967296"], "--seed"),
    (["train", "--steps", "1e21"], "at most"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--batch", "100000"], "--batch"),
    (["train", "--patch", "5"], "--patch"),
    (["train", "--workers", "100000"], "--workers"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--log-every", "0"], "--log-every"),
    (["train", "--variant", "dim=20000"], "dim must be at most"),
    (["synth", "--source", ".", "--seed=-1"], "--seed"),
    (["enhance", "--weights", "w.pth", "--batch", "0", "x.png"], "--batch"),
    (["enhance", "--weights", "w.pth", "--gamma", "inf", "x.png"], "--gamma"),
    (["enhance", "--weights", "w.pth", "--variant", "dim=20000", "x.png"],
     "dim must be at most"),
    (["convert", "a.pth", "b.safetensors", "--variant", "dim=20000"], "dim must be at most"),
    (["table2", "--repeats", "0"], "--repeats"),
    (["bench", "--batch", "0"], "--batch"),
    (["bench", "--repeats", "1e6"], "at most"),
    (["bench", "--peak-size", "1e9"], "at most"),
    (["bench", "--workload", "train", "--patch", "5"], "--patch"),
    (["bench", "--size", "99999x99999"], "this run may use"),
    (["bench", "--size", "4000x6000", "--batch", "4096"], "this run may use"),
    (["parity", "--seed=-1"], "--seed"),
    (["parity", "--tol", "nan"], "--tol"),
    (["parity", "--steps", "0"], "--steps"),
    (["parity", "--size", "99999x99999"], "needs about"),
    (["parity", "--variant", "dim=20000"], "dim must be at most"),
])
def test_out_of_range_numbers_are_one_line_exit_2_before_any_work(tmp_path, capsys,
                                                                  monkeypatch, argv, phrase):
    monkeypatch.chdir(tmp_path)
    if argv[0] in ("train", "synth"):
        argv = argv + ["--out", str(tmp_path / "out")]
    if argv[0] == "enhance":
        argv = argv[:1] + ["--out", str(tmp_path / "out")] + argv[1:]
    assert phrase in _refused(capsys, argv)
    assert not (tmp_path / "out").exists()
