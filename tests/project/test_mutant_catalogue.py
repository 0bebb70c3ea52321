"""The mutation catalogue of `make mutants` (tools/mutants.py) still applies to the code as
it stands: every snippet occurs exactly once in its file, every named test file exists;
a stale mutant is refused by name. No mutant is run here (that takes ~20 minutes)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _mutants_module():
    spec = importlib.util.spec_from_file_location("dln_mutants", ROOT / "tools" / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def test_every_mutant_of_the_catalogue_still_applies_exactly_once():
    mutants = _mutants_module()
    assert mutants.stale_mutants(ROOT) == []
    names = [m.name for m in mutants.CATALOGUE]
    assert len(names) == len(set(names)) >= 25
    assert {m.issue_item for m in mutants.CATALOGUE} >= {3, 4, 5, 6}
    for m in mutants.CATALOGUE:
        assert m.tests and m.what and m.snippet != m.replacement, m.name


def test_a_stale_or_ambiguous_snippet_is_refused_by_name(tmp_path):
    mutants = _mutants_module()
    (tmp_path / "a.py").write_text("x = 1\nx = 1\ny = 2\n")
    (tmp_path / "test_a.py").write_text("")
    catalogue = [mutants.Mutant("gone", "a.py", "z = 3", "z = 4", ("test_a.py",), "w"),
                 mutants.Mutant("twice", "a.py", "x = 1", "x = 2", ("test_a.py",), "w"),
                 mutants.Mutant("fine", "a.py", "y = 2", "y = 3", ("test_a.py",), "w"),
                 mutants.Mutant("no-tests", "a.py", "y = 2", "y = 4", ("test_b.py",), "w")]
    problems = mutants.stale_mutants(tmp_path, catalogue)
    assert [p.split(":")[0] for p in problems] == ["gone", "twice", "no-tests"], problems
    assert "occurs 0 times" in problems[0] and "occurs 2 times" in problems[1]
