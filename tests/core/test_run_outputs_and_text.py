"""No run destroys an input: outputs are compared with every input and with each other
by resolved path and by device and inode (core.run_outputs); names print as one line
(core.text)."""

from __future__ import annotations

import os

import pytest

from core.run_outputs import OutputClash, OutputPlan, refused_outputs, same_file
from core.text import escape_markdown, escape_text


def _files(root, *names):
    paths = []
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())
        paths.append(path)
    return paths


def test_an_output_named_like_another_input_is_refused_before_either_is_written(tmp_path):
    a_jpg, a_png = _files(tmp_path, "p/a.jpg", "p/a.png")
    refused = refused_outputs([(a_jpg, tmp_path / "p/a.png"), (a_png, tmp_path / "p/a.png")])
    assert set(refused) == {a_jpg, a_png}
    assert "another input" in refused[a_jpg] and "would replace this input" in refused[a_png]


def test_an_output_folder_that_is_an_input_folder_protects_its_files(tmp_path):
    a, b = _files(tmp_path, "A/x.png", "B/x.png")
    refused = refused_outputs([(a, tmp_path / "B/x.png"), (b, tmp_path / "B/x.png")])
    assert set(refused) == {a, b}


def test_two_outputs_of_one_run_never_share_a_name(tmp_path):
    a, b = _files(tmp_path, "in/a.jpg", "in/a.bmp")
    refused = refused_outputs([(a, tmp_path / "out/a.png"), (b, tmp_path / "out/./a.png")])
    assert list(refused) == [b] and "already used by" in refused[b]


@pytest.mark.parametrize("how", ["symlink to the input", "hard link to the input",
                                 "folder reached through a link"])
def test_links_do_not_hide_that_an_output_is_an_input(tmp_path, how):
    (source,) = _files(tmp_path, "in/x.png")
    out = tmp_path / "out"
    out.mkdir()
    if how == "symlink to the input":
        (out / "x.png").symlink_to(source)
        output = out / "x.png"
    elif how == "hard link to the input":
        os.link(source, out / "x.png")
        output = out / "x.png"
    else:
        (out / "alias").symlink_to(source.parent, target_is_directory=True)
        output = out / "alias" / "x.png"
    plan = OutputPlan([source])
    with pytest.raises(OutputClash, match="would replace this input"):
        plan.claim(output, source)
    assert same_file(output, source)


def test_outputs_apart_from_the_inputs_are_all_granted(tmp_path):
    inputs = _files(tmp_path, "in/a.png", "in/b.png")
    plan = OutputPlan(inputs)
    for source in inputs:
        plan.claim(tmp_path / "out" / source.name, source)
    assert refused_outputs([(p, tmp_path / "o" / p.name) for p in inputs]) == {}


def test_a_refusal_is_one_line_whatever_the_names_hold(tmp_path):
    (source,) = _files(tmp_path, "in/bad\nname.png")
    weird = os.fsdecode(b"in/\xff")
    with pytest.raises(OutputClash) as info:
        OutputPlan([source]).claim(source, tmp_path / weird)
    text = str(info.value)
    assert "\n" not in text and "\\n" in text and "\\xff" in text
    text.encode("utf-8")  # printable on any UTF-8 terminal


def test_escape_text_makes_any_name_one_printable_line():
    name = os.fsdecode(b"a\xffb\nc\td\x1b[31m\xe2\x80\xa8e")
    shown = escape_text(name)
    assert shown == "a\\xffb\\nc\\td\\x1b[31m\\u2028e"
    assert shown.isprintable() and escape_text(shown) == shown  # idempotent
    assert escape_text("café/ok name.png") == "café/ok name.png"
    assert escape_text(b"x\xfe") == "x\\xfe"


def test_escape_markdown_keeps_a_table_row_one_row():
    cell = escape_markdown("a|b\n*c*_<d>`e`[f](g)")
    assert "\n" not in cell and "|" not in cell.replace("\\|", "")
    assert cell == "a\\|b\\\\n\\*c\\*\\_\\<d\\>\\`e\\`\\[f\\](g)"
