"""The one pass rule fails safe, on hand-made outputs (no model): a NaN or an infinity at
any place of either side (even the same value at the same place on both), zero-size
arrays, a shape mismatch whose values are otherwise equal, a chosen module with no
output on either side, a final output with no array, and an empty comparison, each
fail; equal finite outputs pass."""

from __future__ import annotations

import math

import numpy as np
import pytest

from parity.engine.rows import (EMPTY, MISSING, MISSING_TORCH, NOT_COMPARED, SHAPE, Report,
                                align_rows, verdict_line)
from parity.engine.tolerance import FORWARD_ATOL, measure

RNG = np.random.default_rng(0)
BLOCK = RNG.random((2, 5, 7, 3), dtype=np.float32)
FINAL = RNG.random((2, 3), dtype=np.float32)


def _outputs(block=BLOCK, final=FINAL) -> dict:
    return {("block", ""): block, ("", ""): final}


def _poisoned(array: np.ndarray, value: float, index: int) -> np.ndarray:
    out = array.copy()
    out.reshape(-1)[index] = value
    return out


def test_equal_finite_outputs_pass():
    report = align_rows(_outputs(), _outputs(BLOCK.copy(), FINAL.copy()))
    assert report.passed and [r.status for r in report.rows] == ["pass", "pass"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["flax", "torch", "both"])
@pytest.mark.parametrize("row,index", [("block", 0), ("block", BLOCK.size - 1),
                                       ("", 0), ("", 4)])
def test_a_non_finite_value_anywhere_fails_its_row(value, where, row, index):
    torch_side, flax_side = _outputs(), _outputs(BLOCK.copy(), FINAL.copy())
    for side in ((torch_side, flax_side) if where == "both" else
                 (torch_side,) if where == "torch" else (flax_side,)):
        side[(row, "")] = _poisoned(side[(row, "")], value, index)
    report = align_rows(torch_side, flax_side)
    failing = [r.name for r in report.failures]
    assert not report.passed and failing == ["prediction" if row == "" else row], failing
    assert report.failures[0].rel_to_scale == math.inf


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_measure_never_passes_a_non_finite_difference_at_any_tolerance(value):
    a = _poisoned(FINAL, value, 3)
    for actual, reference in ((a, FINAL), (FINAL, a), (a, a)):
        for tol in (FORWARD_ATOL, 1.0, 1e30):
            result = measure(actual, reference, tol)
            assert not result.passed and result.max_abs == math.inf, (actual, reference, tol)


def test_zero_size_outputs_are_empty_and_fail():
    empty = np.zeros((2, 0), np.float32)
    assert not measure(empty, empty).passed and measure(empty, empty).empty
    report = align_rows(_outputs(final=empty), _outputs(BLOCK.copy(), empty.copy()))
    assert not report.passed and [(r.name, r.status) for r in report.failures] == \
        [("prediction", EMPTY)]


def test_a_shape_mismatch_alone_fails():
    """The same values, another shape: never compared as equal."""
    report = align_rows(_outputs(), _outputs(BLOCK.copy(), FINAL.reshape(3, 2)))
    assert not report.passed and [(r.name, r.status) for r in report.failures] == \
        [("prediction", SHAPE)]
    report = align_rows(_outputs(), _outputs(BLOCK.copy(), FINAL[..., None]))
    assert [(r.name, r.status) for r in report.failures] == [("prediction", SHAPE)]


def test_a_declared_module_missing_on_either_side_fails():
    torch_side = _outputs()
    jax_side = {("", ""): FINAL.copy()}
    report = align_rows(torch_side, jax_side, chosen=True, declared=["block"])
    assert [(r.name, r.status) for r in report.failures] == [("block", MISSING)]
    report = align_rows({("", ""): FINAL}, _outputs(BLOCK.copy(), FINAL.copy()),
                        chosen=True, declared=["block"])
    assert [(r.name, r.status) for r in report.failures] == [("block", MISSING_TORCH)]


def test_a_final_output_with_no_array_on_either_side_fails():
    report = align_rows({("block", ""): BLOCK}, {("block", ""): BLOCK.copy()})
    assert not report.passed and [(r.name, r.status) for r in report.failures] == \
        [("prediction", NOT_COMPARED)]


@pytest.mark.parametrize("torch_side,flax_side", [
    ({}, {}),
    ({("a", ""): BLOCK, ("", ""): FINAL}, {("b", ""): BLOCK, ("", "[0]"): FINAL}),
], ids=["no-rows", "nothing-paired"])
def test_an_empty_comparison_never_passes(torch_side, flax_side):
    report = align_rows(torch_side, flax_side)
    assert not report.passed and not report.compared
    assert not Report([], FORWARD_ATOL).passed
    assert not verdict_line(report).startswith("PASS")
