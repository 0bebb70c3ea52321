"""`dln synth` never loses a source image or leaves a mismatched pair, and names that are
not UTF-8 or hold newlines neither stop a folder nor split a line, whatever the
terminal's encoding (`dln synth`, `dln metrics`, `dln convert`)."""

from __future__ import annotations

import io
import os
import sys

import numpy as np
import pytest
from PIL import Image

from dln.cli import main

RNG = np.random.default_rng(21)
NON_UTF8 = os.fsdecode(b"bad\xff name")


def _photo(path, h=40, w=52) -> None:
    Image.fromarray(RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _digests(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _run(argv, encoding="utf-8") -> tuple[int, str, str]:
    """main() with stdout and stderr as a strict terminal of `encoding` would be
    (Python's default under an en_US.UTF-8 locale: errors='strict')."""
    out, err = io.BytesIO(), io.BytesIO()
    streams = sys.stdout, sys.stderr
    sys.stdout = io.TextIOWrapper(out, encoding=encoding, errors="strict")
    sys.stderr = io.TextIOWrapper(err, encoding=encoding, errors="strict")
    try:
        code = main(argv)
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
            stream.detach()  # keeps the BytesIO open
        sys.stdout, sys.stderr = streams
    return code, out.getvalue().decode(encoding), err.getvalue().decode(encoding)


def test_synth_with_out_above_the_source_refuses_before_touching_an_original(tmp_path):
    source = tmp_path / "s" / "high"
    source.mkdir(parents=True)
    for name in ("a", "b"):
        _photo(source / f"{name}.png")
    before = _digests(source)
    code, _, err = _run(["synth", "--source", str(source), "--out", str(tmp_path / "s"),
                         "--overwrite"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "source" in err, err
    assert _digests(source) == before and not (tmp_path / "s" / "low").exists()


def test_a_source_image_that_is_a_link_to_an_output_is_never_replaced(tmp_path):
    source, out = tmp_path / "src", tmp_path / "out"
    (out / "high").mkdir(parents=True)
    source.mkdir()
    _photo(out / "high" / "a.png")
    (source / "a.png").symlink_to(out / "high" / "a.png")
    _photo(source / "b.png")
    before = (out / "high" / "a.png").read_bytes()
    code, _, err = _run(["synth", "--source", str(source), "--out", str(out), "--overwrite"])
    assert code == 1 and len(err.strip().splitlines()) == 1 and "input" in err, err
    assert (out / "high" / "a.png").read_bytes() == before
    assert (out / "low" / "b.png").exists() and (out / "high" / "b.png").exists()


def test_a_pair_whose_low_image_cannot_be_published_keeps_the_old_pair(tmp_path):
    source, out = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    _photo(source / "a.png")
    assert _run(["synth", "--source", str(source), "--out", str(out)])[0] == 0
    old_high = (out / "high" / "a.png").read_bytes()
    (out / "low" / "a.png").unlink()
    (out / "low" / "a.png").mkdir()  # the second publish of the pair fails here
    (out / "low" / "a.png" / "x").write_bytes(b"")
    _photo(source / "a.png", 60, 44)  # a new source: a new pair would differ
    code, _, err = _run(["synth", "--source", str(source), "--out", str(out), "--overwrite"])
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert (out / "high" / "a.png").read_bytes() == old_high
    assert not [p for p in (out / "high").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("encoding", ["utf-8", "ascii"])
def test_names_that_are_not_utf8_or_hold_newlines_neither_stop_nor_split(tmp_path, encoding):
    source, out = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    for stem in (NON_UTF8, "line\nbreak", "plain"):
        _photo(source / f"{stem}.png")
    (source / f"broken{NON_UTF8}\n.png").write_bytes(b"not an image")
    code, stdout, err = _run(["synth", "--source", str(source), "--out", str(out)], encoding)
    assert code == 1 and "Traceback" not in err, err
    assert "wrote 3 pair(s)" in stdout
    (line,) = err.strip().splitlines()
    assert "brokenbad\\xff name\\n.png" in line
    assert sorted(p.name for p in (out / "low").iterdir()) == sorted(
        f"{s}.png" for s in (NON_UTF8, "line\nbreak", "plain"))
    code, stdout, err = _run(["metrics", "--pred", str(out / "low"), "--gt",
                              str(out / "high")], encoding)
    assert code == 0 and "Traceback" not in err, err
    rows = stdout.strip().splitlines()
    assert len(rows) == 5 and rows[1].startswith("bad\\xff name") and \
        rows[2].startswith("line\\nbreak")


def test_convert_to_a_name_that_is_not_utf8_prints_it_escaped(tmp_path, authors_pth_16):
    dst = tmp_path / f"{NON_UTF8}.safetensors"
    code, stdout, err = _run(["convert", str(authors_pth_16), str(dst)], "utf-8")
    assert code == 0 and dst.is_file() and "bad\\xff name.safetensors" in stdout, err


def test_a_long_thin_strip_is_one_problem_line_not_gigabytes(tmp_path):
    """A 1 x 3000 image resized to a shorter side of 384 would be 384 x 1,152,000 pixels
    (killed for memory before); it is refused from its size and the folder goes on."""
    source = tmp_path / "src"
    source.mkdir()
    Image.fromarray(np.zeros((1, 3000, 3), np.uint8)).save(source / "strip.png")
    _photo(source / "ok.png")
    code, stdout, err = _run(["synth", "--source", str(source), "--out", str(tmp_path / "o")])
    assert code == 1 and "wrote 1 pair(s)" in stdout, err
    (line,) = err.strip().splitlines()
    assert "strip.png" in line and "MP" in line
