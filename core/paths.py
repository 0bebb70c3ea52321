"""Where the project's bundled data live: the sample checkpoint and the sample pairs.

Both are package data, found with importlib's resource readers, so the same code
works from a source checkout, an editable install and a plain `pip install .`:
- the trained sample model `dln_sample.pth` in the `sample/` folder of the `weights`
  package (weights/**/*.pth and weights/**/README.md are shipped in the wheel);
- the bundled low-light pairs `samples/low/*.png` and `samples/high/*.png` of this
  `core` package (data only: no generic top-level `samples` package is installed).
The packages are located, not imported: this core module runs no code of the layer
above it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_folder(name: str) -> Path:
    """The folder of the installed (or checked-out) top-level package `name`, found
    through its loader's resource reader without running the package's __init__."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {name!r} is not installed: its bundled data "
                                  "cannot be found (reinstall dln-port)")
    reader = spec.loader.get_resource_reader(name)
    folder = reader.files() if reader is not None else None
    if not isinstance(folder, Path):  # e.g. a zipped install: not supported
        folder = Path(spec.submodule_search_locations[0])
    return folder


SAMPLE_CHECKPOINT = package_folder("weights") / "sample" / "dln_sample.pth"
SAMPLE_IMAGES = package_folder("core") / "samples"
