"""Nothing a user sees cites documents that are not in the repository: code (docstrings,
help texts, printed notes), README, SECURITY.md and docs state facts in place.
(The names are assembled here so that this file does not match itself.)"""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = re.compile("|".join(["dln" + "_facts", "porting" + "_facts", "shared/" + "arch",
                                 "architecture" + r"\.md", "the " + "issue"]), re.IGNORECASE)
SKIP_PARTS = {".venv", "fixtures", "__pycache__", ".git", "build", "out", ".hypothesis"}


def shipped_text_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "SECURITY.md", REPO / "Makefile", REPO / "pyproject.toml"]
    for folder, subfolders, names in os.walk(REPO):
        subfolders[:] = [s for s in subfolders
                         if s not in SKIP_PARTS and not s.endswith(".egg-info")]
        files += [Path(folder) / n for n in names
                  if Path(n).suffix in (".py", ".md", ".toml", ".txt")]
    return sorted(set(p for p in files if p.is_file()))


def test_no_file_cites_a_document_outside_the_repository():
    hits = []
    for path in shipped_text_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if FORBIDDEN.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not hits, "state the fact in place instead:\n" + "\n".join(hits)


def test_the_check_sees_a_planted_citation():
    assert FORBIDDEN.search("see " + "dln" + "_facts.md section 7")
    assert FORBIDDEN.search("a floor of " + "The " + "Issue")
