"""A CI fixture for any model: what the torch model computed, kept so that its port can be
checked where PyTorch is not installed.

    save_fixture("net.safetensors", torch_model, flax_model, x)   # where torch runs
    report = check_fixture("net.safetensors", flax_model)          # needs no torch

One safetensors file (written atomically and verified, core.atomic_files) holds the
inputs (`input/0`, ..., torch layout), the converted weights (`variable/<collection/path/
leaf>`, the Flax layout) and the output of every captured torch module (`output/<i>`,
3- to 5-D arrays channels-last, as the engine compares them). Its metadata holds, as
JSON: the rows (torch module and output suffix) in finish order, each module's kind and
first input shape, the pairing of torch modules with Flax paths, the tolerance, the
layouts, the torch version and whether the modules were chosen (then a missing
counterpart fails). Checking reads the file with the toolkit's safe safetensors reader
and runs the Flax side only: `import torch` never happens.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from core.errors import UserError
from parity.engine.frontend import as_input_tuple, frontend_for
from parity.engine.prepared import PreparedPort, prepare_port
from parity.engine.rows import Report
from parity.engine.tolerance import FORWARD_ATOL
from parity.engine.torch_side import TorchCapture
from weights.trees import shape_mismatch

FORMAT, FORMAT_VERSION = "parity-fixture", "1"
LAYOUTS = {"inputs": "torch's (input_layouts: what the Flax side takes)",
           "variables": "Flax (flat keys collection/path/leaf)",
           "outputs": "as compared (row_layouts: moved channels-last or as they are)"}


class FixtureError(UserError, ValueError):
    """A fixture file that cannot be read, or that does not fit the port."""


@dataclasses.dataclass
class Fixture:
    inputs: tuple[np.ndarray, ...]
    variables: dict[str, np.ndarray]        # flat keys
    reference: TorchCapture
    mapping: dict[str, str]                 # torch module -> Flax path
    chosen: bool
    tol: float
    extra: dict                             # a preset's own items (e.g. DLN's config)


def save_fixture(path: str | os.PathLike, torch_model, flax_model, inputs, *,
                 mapping: dict[str, str] | None = None, torch_modules: list[str] | None = None,
                 apply_kwargs: dict | None = None, tol: float = FORWARD_ATOL,
                 extra: dict | None = None, overwrite: bool = True,
                 extra_rules: dict | None = None,
                 input_layout: str | list[str] | None = None) -> Path:
    """Run the torch model on `inputs`, convert its weights for `flax_model`, and write
    the fixture file; returns its path."""
    port = prepare_port(torch_model, flax_model, inputs, mapping=mapping,
                        apply_kwargs=apply_kwargs, tol=tol, torch_modules=torch_modules,
                        extra_rules=extra_rules, input_layout=input_layout)
    return write_fixture(path, port, extra, overwrite)


def write_fixture(path: str | os.PathLike, port: PreparedPort, extra: dict | None = None,
                  overwrite: bool = True) -> Path:
    import torch

    from weights.files import save_safetensors

    rows = list(port.reference.outputs)
    pairing = {name: port.flax_path_of(name) for name in [""] + list(port.reference.kinds)}
    description = {
        "rows": [list(key) for key in rows], "kinds": port.reference.kinds,
        "input_shapes": {k: list(v) for k, v in port.reference.input_shapes.items()},
        "mapping": {k: v for k, v in pairing.items() if v is not None},
        "chosen": port.chosen, "tolerance": port.tol, "layouts": LAYOUTS,
        "frontend": port.frontend.kind, "made_by": f"torch {torch.__version__}",
        "input_layouts": list(port.reference.input_layouts),
        "row_layouts": [port.reference.layouts.get(key) for key in rows],
        "not_judged": sorted(port.reference.composite),
        "extra": extra or {}}
    tensors = {**{f"input/{i}": x for i, x in enumerate(port.inputs)},
               **{f"variable/{k}": np.asarray(v) for k, v in
                  port.frontend.flat(port.variables).items()},
               **{f"output/{i}": port.reference.outputs[key] for i, key in enumerate(rows)}}
    save_safetensors(tensors, path, {"format": FORMAT, "format_version": FORMAT_VERSION,
                                     "fixture": json.dumps(description, sort_keys=True)},
                     overwrite)
    return Path(path)


def load_fixture(path: str | os.PathLike) -> Fixture:
    from weights.files import load_safetensors

    arrays, metadata = load_safetensors(path)
    if (metadata.get("format"), metadata.get("format_version")) != (FORMAT, FORMAT_VERSION):
        raise FixtureError(f"{path}: not a parity fixture (its metadata names format "
                           f"{metadata.get('format')!r}, not {FORMAT} {FORMAT_VERSION})")
    try:
        d = json.loads(metadata["fixture"])
        rows = [(str(module), str(suffix)) for module, suffix in d["rows"]]
        outputs = OrderedDict((key, arrays[f"output/{i}"]) for i, key in enumerate(rows))
        inputs = tuple(arrays[f"input/{i}"] for i in range(sum(k.startswith("input/")
                                                                for k in arrays)))
        reference = TorchCapture(outputs, dict(d["kinds"]),
                                 {k: tuple(v) for k, v in d["input_shapes"].items()},
                                 [], {key: layout for key, layout in
                                      zip(rows, d.get("row_layouts", [])) if layout},
                                 tuple(d.get("input_layouts", ())),
                                 frozenset(d.get("not_judged", ())))
        variables = {k[len("variable/"):]: v for k, v in arrays.items()
                     if k.startswith("variable/")}
        return Fixture(inputs, variables, reference, dict(d["mapping"]), bool(d["chosen"]),
                       float(d["tolerance"]), dict(d.get("extra", {})))
    except (KeyError, TypeError, ValueError) as err:
        raise FixtureError(f"{path}: a damaged parity fixture ({type(err).__name__}: {err})") \
            from None


def fixture_port(fixture: Fixture, flax_model, *, apply_kwargs: dict | None = None,
                 tol: float | None = None, where: str = "the fixture") -> PreparedPort:
    """A prepared port of `flax_model` against the fixture's capture and weights (no torch
    model); the weights must fit the Flax model's variables exactly."""
    frontend = frontend_for(flax_model, apply_kwargs)
    inputs = as_input_tuple(fixture.inputs)
    census = frontend.census(inputs)
    problems = shape_mismatch({k: v.shape for k, v in fixture.variables.items()}, census.shapes)
    if problems:
        raise FixtureError(f"{where}: its weights do not fit the Flax model: {problems}")
    return PreparedPort(None, frontend, frontend.nested(fixture.variables), inputs, census,
                        None, fixture.reference, fixture.mapping,
                        fixture.tol if tol is None else tol, fixture.chosen)


def check_fixture(path: str | os.PathLike, flax_model, *, tol: float | None = None,
                  apply_kwargs: dict | None = None) -> Report:
    """The Flax model against the fixture's stored torch outputs, row by row."""
    return fixture_port(load_fixture(path), flax_model, apply_kwargs=apply_kwargs, tol=tol,
                        where=str(path)).compare()
