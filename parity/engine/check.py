"""`dln check`'s logic: any torch model and its Flax port, from two factory functions.

A factory is `FILE.py:FUNC` or `package.module:FUNC`; it is called with no arguments
and returns the torch model (used in eval mode) or the Flax module. Without a
weights file the torch model's own weights are converted by the rules of
weights/rules.py; with one (a torch state dict, .pth/.pt or .safetensors with torch
names) it is loaded into the torch model strictly first. Inputs are seeded uniform
[0, 1) in the torch layout (NCHW).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from core.errors import UserError
from parity.engine.api import Report, compare
from parity.engine.tolerance import FORWARD_ATOL


class CheckInputError(UserError, ValueError):
    """A factory, shape, weights file or mutant name `dln check` cannot use."""


def load_factory(spec: str) -> Callable:
    """FILE.py:FUNC or package.module:FUNC -> the function."""
    where, sep, func = spec.rpartition(":")
    if not sep or not where or not func:
        raise CheckInputError(f"{spec!r}: expected FILE.py:FUNC or package.module:FUNC")
    try:
        if where.endswith(".py"):
            path = Path(where).resolve()
            if not path.is_file():
                raise CheckInputError(f"{where}: no such file")
            name = f"_dln_check_{path.stem}_{abs(hash(str(path)))}"
            spec_obj = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec_obj)
            sys.path.insert(0, str(path.parent))  # its sibling imports work
            try:
                sys.modules[name] = module
                spec_obj.loader.exec_module(module)
            finally:
                sys.path.remove(str(path.parent))
        else:
            # like `python -m`: modules of the current folder are importable
            sys.path.insert(0, str(Path.cwd()))
            try:
                module = importlib.import_module(where)
            finally:
                sys.path.remove(str(Path.cwd()))
    except CheckInputError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's file failed to import
        raise CheckInputError(f"{where}: cannot import ({type(err).__name__}: {err})") from None
    factory = getattr(module, func, None)
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


def seeded_inputs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def load_weights_into(torch_model, path: str) -> None:
    """A torch state dict file into the model, strictly (sorted lists on mismatch)."""
    import torch

    from weights.files import is_safetensors_path, load_pth, load_safetensors

    state = load_safetensors(path)[0] if is_safetensors_path(path) else \
        load_pth(path, expect_dln=False)[0]
    own = torch_model.state_dict()
    counters = {k for k in own if k.endswith("num_batches_tracked")}  # not weights: kept
    state = {**{k: own[k].numpy() for k in counters}, **state}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = sorted(k for k in set(own) & set(state)
                       if tuple(own[k].shape) != tuple(np.shape(state[k])))
    if missing or unexpected or misshapen:
        parts = [f"{label}: {', '.join(items[:12])}" for label, items in
                 (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen))
                 if items]
        raise CheckInputError(f"{path}: does not fit the torch model: " + "; ".join(parts))
    torch_model.load_state_dict({k: torch.as_tensor(np.asarray(state[k])).to(own[k].dtype)
                                 for k in own}, strict=True)


@dataclasses.dataclass
class CheckResult:
    report: Report
    mutants: object | None          # parity.zoo.mutation.MutationReport
    input_shape: tuple[int, ...]
    seed: int
    torch_spec: str
    flax_spec: str
    weights: str
    gradients: object | None = None  # parity.grads.model_gradients.GradientComparison

    @property
    def passed(self) -> bool:
        return self.report.passed and (self.mutants is None or not self.mutants.missed) and \
            (self.gradients is None or self.gradients.passed)


def build_models(torch_spec: str, flax_spec: str):
    import flax.linen as fnn
    import torch

    torch_model = load_factory(torch_spec)()
    if not isinstance(torch_model, torch.nn.Module):
        raise CheckInputError(f"{torch_spec} returned {type(torch_model).__name__}, not a "
                              "torch.nn.Module")
    flax_module = load_factory(flax_spec)()
    if not isinstance(flax_module, fnn.Module):
        raise CheckInputError(f"{flax_spec} returned {type(flax_module).__name__}, not a "
                              "flax.linen.Module")
    return torch_model.eval(), flax_module


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


def run_check(torch_spec: str, flax_spec: str, input_shape: tuple[int, ...],
              weights: str | None = None, seed: int = 0, mutants: str | None = None,
              tol: float = FORWARD_ATOL, progress=None, gradients: bool = False
              ) -> CheckResult:
    from parity.zoo.mutation import run_zoo
    from parity.zoo.port import prepare_port

    names = mutant_names(mutants)
    torch_model, flax_module = build_models(torch_spec, flax_spec)
    if weights:
        load_weights_into(torch_model, weights)
    x = seeded_inputs(input_shape, seed)
    try:
        port = prepare_port(torch_model, flax_module, x, tol=tol)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - a model that cannot run these inputs
        raise CheckInputError(f"the models cannot run inputs of shape "
                              f"{','.join(map(str, input_shape))}: {type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}") from None
    report = compare(torch_model, flax_module, port.variables, x, tol=tol, mapping=port.mapping,
                     reference=port.reference, apply_fn=port.base_apply)
    zoo = run_zoo(port, names, baseline=report, progress=progress) if names else None
    grads = None
    if gradients:
        from parity.grads.model_gradients import model_gradient_parity

        grads = model_gradient_parity(torch_model, flax_module, port.variables, x, port.plan,
                                      tol=tol)
    label = weights or "the torch model's own weights, converted by the rules"
    return CheckResult(report, zoo, input_shape, seed, torch_spec, flax_spec, label, grads)
