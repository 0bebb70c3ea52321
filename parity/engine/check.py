"""`dln check`'s logic: any torch model and its Flax port, from two factory functions.

A factory is `FILE.py:FUNC` or `package.module:FUNC`; the file is imported and the
function called with no arguments (their code runs: only name files you trust). It
returns the torch model (used in eval mode) or the Flax model. Importing, calling and
the first run of both models happen inside a guard: an exception, SystemExit (even
sys.exit(0)), KeyboardInterrupt or RecursionError there is one user error, and what
the user's code prints goes to stderr. Without a weights file the torch model's own
weights are converted by the rules of weights/rules.py; with one (a torch state dict,
.pth/.pt or .safetensors with torch names) it is loaded into the torch model strictly
first. Inputs are seeded uniform [0, 1) in the torch layout (NCHW); the memory a run
needs is estimated before any input is made (parity.engine.memory).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from core.errors import UserError
from parity.engine.report import CheckResult
from parity.engine.tolerance import FORWARD_ATOL

TITLE = "Parity check: PyTorch model vs Flax port"


class CheckInputError(UserError, ValueError):
    """A factory, shape, weights file or mutant name `dln check` cannot use."""


@contextlib.contextmanager
def user_code(what: str) -> Iterator[None]:
    """Run the user's code: its prints go to stderr, and whatever it raises (SystemExit
    and KeyboardInterrupt included) becomes one CheckInputError naming `what`."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except UserError:
        raise
    except (Exception, SystemExit, KeyboardInterrupt) as err:  # noqa: BLE001 - user code
        detail = str(err).splitlines()[0] if str(err).strip() else ""
        hint = ""
        if type(err).__name__ == "InvalidRngError":  # flax: a random draw without a key
            hint = ("; a module that draws random numbers (dropout, stochastic depth) runs "
                    "in training mode: pass the port's evaluation switch with --apply-kwargs, "
                    "e.g. '{\"train\": false}' or '{\"deterministic\": true}'")
        raise CheckInputError(f"{what}: {type(err).__name__}"
                              + (f": {detail[:200]}" if detail else "") + hint) from None


def load_factory(spec: str, attribute: bool = False) -> Callable:
    """FILE.py:FUNC or package.module:FUNC -> the function (the module is imported);
    attribute: any attribute of that name (not only a function)."""
    where, sep, func = spec.rpartition(":")
    if not sep or not where or not func:
        raise CheckInputError(f"{spec!r}: expected FILE.py:FUNC or package.module:FUNC")
    if where.endswith(".py"):
        path = Path(where).resolve()
        if not path.is_file():
            raise CheckInputError(f"{where}: no such file")
        folder, name = str(path.parent), f"_dln_check_{path.stem}_{abs(hash(str(path)))}"
    else:
        # like `python -m`: modules of the current folder are importable
        folder, name = str(Path.cwd()), where
    sys.path.insert(0, folder)  # a file's sibling imports work
    try:
        with user_code(f"{where}: cannot import"):
            if where.endswith(".py"):
                spec_obj = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec_obj)
                sys.modules[name] = module
                spec_obj.loader.exec_module(module)
            else:
                module = importlib.import_module(where)
    finally:
        sys.path.remove(folder)
    factory = getattr(module, func, None)
    if attribute:
        if factory is None:
            raise CheckInputError(f"{where} has no {func}")
        return factory
    if not callable(factory):
        raise CheckInputError(f"{where} has no function {func!r}")
    return factory


def parse_input_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise CheckInputError(f"--input-shape {text!r}: expected integers like 2,3,32,32") \
            from None
    if len(shape) < 2 or min(shape) < 1:
        raise CheckInputError(f"--input-shape {text!r}: needs N,C[,...] of positive sizes")
    return shape


def load_weights_into(torch_model, path: str) -> None:
    """A torch state dict file into the model, strictly (the one shape diff on mismatch)."""
    import torch

    from weights.files import is_safetensors_path, load_pth, load_safetensors
    from weights.trees import shape_mismatch

    state = load_safetensors(path, skip_integers=True)[0] if is_safetensors_path(path) else \
        load_pth(path, expect_dln=False)[0]
    own = torch_model.state_dict()
    # integer buffers (num_batches_tracked, relative_position_index) are not weights: kept
    counters = {k for k, v in own.items() if not v.is_floating_point()}
    state = {**{k: own[k].numpy() for k in counters}, **state}
    problems = shape_mismatch({k: np.shape(v) for k, v in state.items()},
                              {k: tuple(v.shape) for k, v in own.items()})
    if problems:
        raise CheckInputError(f"{path}: does not fit the torch model: {problems}")
    torch_model.load_state_dict({k: torch.as_tensor(np.asarray(state[k])).to(own[k].dtype)
                                 for k in own}, strict=True)


def build(spec: str, kind: type | tuple[type, ...], kind_name: str):
    """The model a factory returns, of `kind`; a torch model or an NNX module is put in
    eval mode (NNX: BatchNorm's running averages, dropout off), a Linen module has none."""
    factory = load_factory(spec)
    with user_code(f"{spec} failed"):
        model = factory()
    if not isinstance(model, kind):
        raise CheckInputError(f"{spec} returned {type(model).__name__}, not a {kind_name}")
    if hasattr(model, "eval") and callable(model.eval):
        with user_code(f"{spec}: its model cannot be put in eval mode"):
            model.eval()
    return model


def build_flax(spec: str):
    """The Flax port a factory returns: a flax.nnx.Module or a flax.linen.Module."""
    import flax.linen
    from flax import nnx

    return build(spec, (nnx.Module, flax.linen.Module), "flax.nnx.Module or flax.linen.Module")


def mutant_names(text: str | None) -> list[str] | None:
    from parity.zoo.catalogue import CATALOGUE

    if text is None:
        return None
    if text == "all":
        return list(CATALOGUE)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CATALOGUE]
    if unknown or not names:
        raise CheckInputError(f"unknown mutant(s) {', '.join(unknown) or text!r} (known: "
                              f"all, {', '.join(CATALOGUE)})")
    return names


def load_mapping(path: str | None) -> dict[str, str] | None:
    """--mapping FILE.json: {"torch module name": "Flax/path", ...}."""
    import json

    if path is None:
        return None
    from core.state_files import StateFileError, read_small_file

    try:  # a regular file of at most 8 MiB, opened non-blocking: a FIFO or /dev/zero is
        mapping = json.loads(read_small_file(path, 8 << 20).decode("utf-8"))  # one line
    except OSError as err:
        raise CheckInputError(f"--mapping {path}: cannot read ({err.strerror})") from None
    except StateFileError as err:
        raise CheckInputError(f"--mapping {path}: cannot read ({err})") from None
    except ValueError as err:
        raise CheckInputError(f"--mapping {path}: not JSON ({err})") from None
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in mapping.items()):
        raise CheckInputError(f"--mapping {path}: expected an object of torch module names "
                              'to Flax paths, e.g. {"layer1.0.conv1": "BasicBlock_0/Conv_1"}')
    return mapping


def parse_apply_kwargs(text: str | None) -> dict | None:
    """--apply-kwargs JSON: keyword arguments of the Flax apply, e.g. {"train": false}."""
    import json

    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as err:
        raise CheckInputError(f"--apply-kwargs {text!r}: not JSON ({err})") from None
    if not isinstance(value, dict):
        raise CheckInputError(f"--apply-kwargs {text!r}: expected a JSON object such as "
                              '{"train": false}')
    return value


def load_rules(path: str | None) -> dict | None:
    """--rules FILE.py: the file's RULES, {torch class or class name: rule}, where a rule is
    rule(torch_module, flax_module) -> {tensor name: (collection, leaf, layout) or None}
    (layouts: weights.rules)."""
    if path is None:
        return None
    if not path.endswith(".py"):
        raise CheckInputError(f"--rules {path}: expected a .py file defining RULES")
    module = load_factory(f"{path}:RULES", attribute=True)
    if not isinstance(module, dict) or not all(callable(v) for v in module.values()):
        raise CheckInputError(f"--rules {path}: RULES must be a dict of torch class (or class "
                              "name) to rule functions")
    return module


def run_check(torch_spec: str, flax_spec: str, input_shape: tuple[int, ...], *,
              weights: str | None = None, seed: int = 0, mutants: str | None = None,
              tol: float = FORWARD_ATOL, progress=None, gradients: bool = False,
              save_fixture: str | None = None, input_layout: str | None = None,
              mapping: str | None = None, apply_kwargs: str | None = None,
              rules: str | None = None, train: bool = False) -> CheckResult:
    from parity.engine.fixture import write_fixture
    from parity.engine.memory import capture_bytes, check_memory
    from parity.engine.prepared import prepare_port
    from parity.zoo.mutation import run_zoo

    names = mutant_names(mutants)
    user_mapping = load_mapping(mapping)
    kwargs = parse_apply_kwargs(apply_kwargs)
    extra_rules = load_rules(rules)
    if save_fixture and (Path(save_fixture).exists() or Path(save_fixture).is_symlink()):
        raise CheckInputError(f"--save-fixture {save_fixture}: exists (remove it first)")
    import torch

    torch_model = build(torch_spec, torch.nn.Module, "torch.nn.Module")
    flax_model = build_flax(flax_spec)
    if weights:
        load_weights_into(torch_model, weights)
    shown = ",".join(map(str, input_shape))
    check_memory(capture_bytes(torch_model, [input_shape]), f"inputs of shape {shown}",
                 "use a smaller --input-shape")
    x = np.random.default_rng(seed).random(input_shape, dtype=np.float32)
    with user_code(f"the models cannot run inputs of shape {shown}"):
        port = prepare_port(torch_model, flax_model, x, tol=tol, mapping=user_mapping,
                            apply_kwargs=kwargs, extra_rules=extra_rules,
                            input_layout=input_layout, training=train)
        report = port.compare()
    if save_fixture:
        write_fixture(save_fixture, port, overwrite=False)
    zoo = run_zoo(port, names=names, baseline=report, progress=progress) if names else None
    grads = None
    if gradients:
        from parity.grads.model_gradients import gradient_parity

        grads = gradient_parity(torch_model, flax_model, port.variables, port.inputs,
                                plan=port.plan, tol=tol, apply_kwargs=kwargs)
    details = {"torch": torch_spec, "flax": flax_spec,
               "weights": weights or "the torch model's own weights, converted by the rules",
               "inputs": {"shape": list(input_shape),
                          "layout": ", ".join(port.reference.input_layouts),
                          "distribution": "uniform [0, 1)", "seed": seed},
               "mode": "training" if train else "eval",
               "pairs_guessed": [f"{t} -> {f} (by {how})" for t, f, how in port.guessed]}
    if save_fixture:
        details["fixture_written"] = save_fixture
    return CheckResult(TITLE, details, report, zoo, grads)


def run_fixture_check(fixture: str, flax_spec: str, *, tol: float | None = None) -> CheckResult:
    """A Flax port against a fixture written by `dln check --save-fixture` (no torch)."""
    from parity.engine.fixture import fixture_port, load_fixture

    if not Path(fixture).is_file():
        raise CheckInputError(f"--fixture {fixture}: no such file")
    stored = load_fixture(fixture)
    flax_model = build_flax(flax_spec)
    with user_code("the Flax model cannot run the fixture's inputs"):
        port = fixture_port(stored, flax_model, tol=tol, where=fixture)
        report = port.compare()
    shapes = [list(x.shape) for x in port.inputs]
    details = {"fixture": fixture, "flax": flax_spec, "weights": "the fixture's",
               "inputs": {"shape": shapes[0] if len(shapes) == 1 else shapes,
                          "layout": "torch (channels first)", "source": "the fixture's"}}
    return CheckResult(TITLE, details, report)
