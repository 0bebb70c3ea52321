"""Text a user gave us (file names, model names, options), shown safely.

File names may hold anything but "/" and NUL: newlines, control characters, and bytes
that are not UTF-8 (Python hands those over as lone surrogates, U+DC80..U+DCFF, which
cannot be printed to a UTF-8 terminal). `escape_text` makes any such text one
printable line: a byte that is not UTF-8 is shown as \\xNN, any other character that
is not printable as its Python escape (\\n, \\t, \\x1b, \\u2028). Everything a command
prints about a name goes through it, so a problem line is never split and printing a
name never fails. `escape_markdown` also keeps the text from changing a Markdown
table or its formatting.
"""

from __future__ import annotations

import os

_MARKDOWN_SPECIAL = set("\\`*_[]<>|~")  # [ ] also disarm links: "(" then means nothing


def _escape_char(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a name that is not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return repr(char)[1:-1] if char != "\\" else "\\"


def escape_text(text: object) -> str:
    """One printable line: non-printable characters (newlines too) as escapes."""
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape_char(c) for c in text)


def escape_markdown(text: object) -> str:
    """escape_text, then a backslash before every character Markdown could read as
    markup (a `|` would end a table cell, `*` and `_` start emphasis, `<` HTML)."""
    return "".join(f"\\{c}" if c in _MARKDOWN_SPECIAL else c for c in escape_text(text))
