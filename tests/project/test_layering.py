"""The layers point one way: every import, at module level or inside a function, is checked.

    dln/                         application: CLI, commands, enhance, demo, training loop
    parity/                      comparison engine, zoo, gradients, evaluation, bench
    frameworks/                  a framework's implementation by name (the trainer)
    port/  reference_torch/      the two models (and examples/, a second worked example)
    weights/                     checkpoint files and layout rules
    core/                        config, recipe, errors, images, data, evaluation protocol

A module may import its own layer and the layers below it, never above; the two models
never import each other; the core imports no deep-learning framework at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# samples/ is data only (the bundled PNG pairs, package data with an empty __init__)
LAYERS = {"samples": 0, "core": 0, "weights": 1, "port": 2, "reference_torch": 2, "examples": 2,
          "frameworks": 3, "parity": 4, "dln": 5}
SIBLINGS_APART = {("port", "reference_torch"), ("reference_torch", "port")}
FRAMEWORKS = {"torch", "jax", "jaxlib", "flax", "optax", "dm_pix", "chex"}


def imported_names(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) for every absolute import in the file, nested ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def project_files(root: Path) -> list[Path]:
    return sorted(p for top in LAYERS for p in (root / top).rglob("*.py"))


def edges_pointing_up(root: Path = REPO) -> list[str]:
    bad = []
    for path in project_files(root):
        own = path.relative_to(root).parts[0]
        for line, name in imported_names(path):
            top = name.split(".")[0]
            where = f"{path.relative_to(root)}:{line} imports {name}"
            if top in LAYERS and LAYERS[top] > LAYERS[own]:
                bad.append(f"{where} (layer {top} is above {own})")
            elif (own, top) in SIBLINGS_APART:
                bad.append(f"{where} (the two models stay independent)")
            elif own == "core" and top in FRAMEWORKS:
                bad.append(f"{where} (the core is framework-neutral)")
    return bad


def test_every_package_of_the_toolkit_has_a_layer():
    packages = {p.parent.relative_to(REPO).parts[0] for p in REPO.glob("*/__init__.py")}
    assert packages - {"tests"} <= set(LAYERS), sorted(packages - set(LAYERS))


def test_no_import_points_up_the_layers():
    bad = edges_pointing_up()
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_layering_check_sees_planted_upward_and_sideways_imports(tmp_path):
    (tmp_path / "core").mkdir()
    (tmp_path / "port").mkdir()
    (tmp_path / "core" / "planted.py").write_text(
        "def f():\n    from parity.engine import tolerance\n    import jax\n")
    (tmp_path / "port" / "planted.py").write_text("import reference_torch.model\nimport core\n")
    bad = edges_pointing_up(tmp_path)
    assert len(bad) == 3, bad
    assert any("planted.py:2 imports parity.engine" in b for b in bad), bad
    assert any("planted.py:3 imports jax" in b for b in bad), bad
    assert any("planted.py:1 imports reference_torch.model" in b for b in bad), bad


@pytest.mark.parametrize("top", sorted(t for t in LAYERS if (REPO / t / "__init__.py").exists()))
def test_importing_a_lower_layer_does_not_load_a_higher_one(top):
    """Importing a package runs its __init__ only: it must not pull in layers above it."""
    import subprocess
    import sys

    code = (f"import sys, {top}; "
            f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=REPO).stdout.split()
    above = [name for name in loaded if name in LAYERS and LAYERS[name] > LAYERS[top]]
    assert not above, f"import {top} loaded {above}"
