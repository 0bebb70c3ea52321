"""A plain (non-editable) install carries its data: the built wheel holds the sample
checkpoint and the bundled pairs, and `dln demo` runs from the installed files alone.

The wheel is built from a copy of the source tree in tmp_path (setuptools writes build/
next to the sources), without build isolation: the pinned setuptools of the test extra is
used, nothing is downloaded. It is installed with `pip install --no-deps --target`, so the
dependencies still come from this environment while the package code and data come from
the wheel; each subprocess checks that it imported the installed copy, not the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "dln", "frameworks", "port", "reference_torch", "weights", "parity", "samples")
BUNDLED = ["weights/sample/dln_sample.pth", "weights/sample/README.md"] + [
    f"samples/{side}/{name}.png" for side in ("low", "high")
    for name in ("chelsea", "coffee", "rocket")]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "--disable-pip-version-check", "-q",
                           "-w", str(dist), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (built,) = dist.glob("dln_port-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                           "--disable-pip-version-check", "--target", str(site), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return site


def _env(site: Path) -> dict:
    # PYTHONPATH comes before site-packages, and the editable install's finder runs after
    # the path finder: the installed copy wins. DLN_NO_PROGRESS keeps stderr to errors.
    return dict(os.environ, PYTHONPATH=str(site), DLN_NO_PROGRESS="1")


def test_the_wheel_holds_the_sample_checkpoint_and_the_bundled_pairs_byte_for_byte(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        missing = [n for n in BUNDLED if n not in names]
        assert not missing, f"not in the wheel: {missing}"
        for name in BUNDLED:
            assert archive.read(name) == (REPO / name).read_bytes(), name
    assert not any(n.startswith("tests/") for n in names), "the test suite is not shipped"


def test_installed_package_finds_its_data_inside_the_install_not_the_checkout(installed, tmp_path):
    code = ("import json, dln, core.paths as p; print(json.dumps({'dln': dln.__file__, "
            "'checkpoint': str(p.SAMPLE_CHECKPOINT), 'samples': str(p.SAMPLE_IMAGES), "
            "'exists': p.SAMPLE_CHECKPOINT.is_file(), "
            "'pairs': sorted(f.name for f in (p.SAMPLE_IMAGES / 'low').glob('*.png'))}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(installed),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout)
    for key in ("dln", "checkpoint", "samples"):
        assert Path(found[key]).is_relative_to(installed), (key, found[key])
    assert found["exists"] and found["pairs"] == ["chelsea.png", "coffee.png", "rocket.png"]


def test_installed_dln_demo_runs_from_an_unrelated_folder(installed, tmp_path):
    """The installed `dln` script with its default (installed) weights, from a folder that
    has no checkout. The pairs are 48x64 crops of the installed samples, which keeps the
    full-width network to seconds; the full demo's numbers are tests/dln/test_sample_model.py's."""
    import numpy as np
    from PIL import Image

    pairs = tmp_path / "pairs"
    for side in ("low", "high"):
        (pairs / side).mkdir(parents=True)
        for name in ("chelsea", "coffee"):
            full = np.asarray(Image.open(installed / "samples" / side / f"{name}.png"))
            Image.fromarray(full[100:148, 200:264]).save(pairs / side / f"{name}.png")
    out = tmp_path / "demo"
    done = subprocess.run([str(installed / "bin" / "dln"), "demo", "--out", str(out),
                           "--samples", str(pairs)],
                          cwd=tmp_path, env=_env(installed), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["enhanced"]) == 2 and not summary["failures"], summary
    assert summary["psnr_enhanced_db"] > summary["psnr_low_db"] + 5, summary
    assert (out / "grid.png").stat().st_size > 0 and (out / "dln_sample.safetensors").is_file()
