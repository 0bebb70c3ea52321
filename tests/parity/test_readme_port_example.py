"""The README's "Port your own model" example runs verbatim and is as short as promised."""

import re
import runpy
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def port_example() -> str:
    text = README.read_text()
    section = text.split("## Port your own model", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_port_your_own_model_example_runs_verbatim(tmp_path, capsys, monkeypatch):
    code = port_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 32
    script = tmp_path / "readme_example.py"
    script.write_text(code)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "True None" in out and "mutation score 100%" in out, out
