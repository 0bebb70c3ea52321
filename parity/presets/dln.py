"""DLN as a configuration of the engine: everything `dln parity` runs.

The engine knows models only through what it is given. For DLN that is:
- the two models, reference_torch.model.DLN (weights loaded strictly) and
  port.model.DLN, on one config;
- the compared modules, chosen by module kind in the reference model: each ConvBlock
  (conv + PReLU, compared as one: a wrong 3x3 conv in `feat1` is reported as `feat1`),
  the FA's dense layers and the FA itself, each lightening/darkening op, each LBP, and
  every convolution outside a ConvBlock (`out`); with the prediction, 62 rows;
- inputs: seeded random images (odd and non-square, batch 2, so that no H/W mix-up or
  per-sample reduction can hide) or image files centre-cropped to their common size;
  the memory they need is worked out from the reference model's structure on meta
  tensors (parity.engine.memory), from image headers before any image is decoded;
- its zoo entries (parity/presets/dln_defects.py), its fixture (package data in the
  fixture format of any model, parity.engine.fixture) and its training loss for the
  gradients, which go through the engine's model gradients in float64 with one Adam step.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import sys
from pathlib import Path

import numpy as np

from core.config import DLNConfig
from core.errors import UserError
from parity.engine.report import CheckResult
from parity.engine.tolerance import FORWARD_ATOL

DEFAULT_SIZE = (45, 67)   # odd and non-square, so that no H/W mix-up can hide
DEFAULT_BATCH = 2         # > 1, so that per-sample reductions (the FA mean) are tested
DEFAULT_SEED = 0
GRADIENT_SIZE = (24, 36)  # at least 11 a side: the authors' SSIM window
FIXTURE_FILE = "dln_dim16.safetensors"
FIXTURE_CONFIG = DLNConfig(dim=16)
FIXTURE_WEIGHTS_SEED, FIXTURE_INPUT_SEED = 16, 9
FIXTURE_SHAPE = (2, 3, 9, 11)  # NCHW: batch > 1, odd and non-square, a small file
REGENERATE = "python -m parity.presets.dln --save-fixture parity/presets/" + FIXTURE_FILE
TITLE = "DLN parity: PyTorch reference vs Flax port"


class ParityInputError(UserError, ValueError):
    """Inputs `dln parity` cannot use (bad size, unreadable or missing images, too big)."""


@dataclasses.dataclass
class Inputs:
    x: np.ndarray          # (N, 3, H, W) float32 in [0, 1], torch layout
    description: str


def default_fixture() -> Path:
    """DLN's committed fixture, package data of parity.presets."""
    return Path(str(importlib.resources.files("parity.presets") / FIXTURE_FILE))


# ---- the models and their compared modules ----------------------------------------------
def reference_model(ckpt):
    from reference_torch.inference import model_from_state

    return model_from_state(ckpt.torch_state, ckpt.config)


PORTS = ("jax", "nnx")  # the Linen port (port/model.py) and the NNX port (port/nnx_model.py)


def port_model(config: DLNConfig, backend: str = "jax"):
    """The port `dln parity` checks: the Linen DLN ("jax") or the NNX DLN ("nnx"; its own
    weights are never used: every variable is given)."""
    if backend == "nnx":
        from port.nnx_model import init_model

        return init_model(config)
    if backend != "jax":
        raise UserError(f"--backend {backend!r}: expected one of {', '.join(PORTS)}")
    from port.model import DLN

    return DLN(config)


def port_variables(frontend, flax_params: dict[str, np.ndarray]) -> dict:
    """DLN's weights (dotted Flax names, which both ports share: one safetensors file
    serves both) as the frontend's variables."""
    from weights.trees import nest_tree

    if frontend.kind == "nnx":
        return frontend.variables_named(flax_params)
    return {"params": nest_tree(flax_params, sep=".")}


def port_mapping(backend: str, torch_names) -> dict[str, str]:
    """Torch block -> port path where the frontend's rename rule does not give it: the
    NNX DLN's attributes are the Linen port's names (`fusion.fc_0` for torch's
    `fusion.fc.0`), so that one safetensors file serves both ports."""
    from weights.trees import rename

    if backend != "nnx":
        return {}
    return {name: rename(name).replace("/", ".") for name in torch_names
            if rename(name).replace("/", ".") != name}


def block_names(torch_model) -> list[str]:
    """DLN's compared modules, in definition order (see the module note)."""
    from torch import nn

    from reference_torch.model import LBP, ConvBlock, FeatureAggregation, LighteningOp

    blocks = (ConvBlock, FeatureAggregation, LighteningOp, LBP, nn.Linear)
    inside = {f"{name}.{child}" for name, m in torch_model.named_modules()
              if isinstance(m, ConvBlock) for child, _ in m.named_children()}
    return [name for name, m in torch_model.named_modules() if name and name not in inside and
            (isinstance(m, blocks) or isinstance(m, nn.Conv2d))]


# ---- inputs and memory ------------------------------------------------------------------
def check_memory(config: DLNConfig, batch: int, height: int, width: int) -> int:
    """Bytes both sides of a run need, counted from the reference model's structure (built
    on the meta device: no memory, no initialisation): every block keeps the input's
    height and width, so its output holds its last convolution's channels per pixel (a
    dense layer: its features per image). Refused in one line beyond the budget
    (parity.engine.memory), before anything is allocated."""
    import torch
    from torch import nn

    from parity.engine.memory import check_memory as within_budget, comparison_bytes
    from reference_torch.model import DLN

    class Structure(DLN):
        def reset_parameters_like_authors(self) -> None:
            pass  # shapes only

    with torch.device("meta"):
        model = Structure(config)
    modules = dict(model.named_modules())
    per_pixel, per_image = 3, 0  # the prediction
    for name in block_names(model):
        module = modules[name]
        if isinstance(module, nn.Linear):
            per_image += module.out_features
        else:
            per_pixel += [m for m in module.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
    pixels = batch * height * width
    need = comparison_bytes(pixels * per_pixel + batch * per_image, 3 * pixels,
                            sum(p.numel() for p in model.parameters()))
    return within_budget(need, f"every block of {batch} image(s) {height}x{width} at dim "
                               f"{config.dim}", "use fewer images (--batch N) or smaller ones")


def random_inputs(size: tuple[int, int] = DEFAULT_SIZE, batch: int = DEFAULT_BATCH,
                  seed: int = DEFAULT_SEED) -> Inputs:
    h, w = size
    x = np.random.default_rng(seed).random((batch, h, w, 3), dtype=np.float32)
    return Inputs(np.ascontiguousarray(x.transpose(0, 3, 1, 2)),
                  f"{batch} seeded random image(s) {h}x{w} (seed {seed})")


def image_inputs(paths: list[str], batch: int | None = None,
                 config: DLNConfig | None = None) -> Inputs:
    """Image files/folders as one batch, centre-cropped to their common size; the memory
    is checked from the image headers before any image is decoded."""
    from core.images import ImageError, header_size, list_images, load_image

    files, problems = list_images(paths)
    if problems:
        raise ParityInputError(problems[0])
    if not files:
        raise ParityInputError("no images found in " + ", ".join(map(str, paths)))
    if batch is not None:
        if batch > len(files):
            raise ParityInputError(f"--batch {batch} but {len(files)} image(s) were given")
        files = files[:batch]
    sizes = [header_size(f) for f in files]
    if config is not None and all(sizes):
        check_memory(config, len(files), min(s[0] for s in sizes), min(s[1] for s in sizes))
    try:
        images = [load_image(f) for f in files]
    except ImageError as err:
        raise ParityInputError(str(err)) from None
    h = min(im.shape[0] for im in images)
    w = min(im.shape[1] for im in images)
    tops_lefts = [((im.shape[0] - h) // 2, (im.shape[1] - w) // 2) for im in images]
    cropped = [im[top:top + h, left:left + w] for im, (top, left) in zip(images, tops_lefts)]
    crop = f", centre-cropped to {h}x{w}" if len({im.shape[:2] for im in images}) > 1 \
        else f" {h}x{w}"
    names = ", ".join(Path(f).name for f in files[:4]) + (" ..." if len(files) > 4 else "")
    x = np.stack(cropped).astype(np.float32).transpose(0, 3, 1, 2)
    return Inputs(np.ascontiguousarray(x), f"{len(files)} image(s){crop}: {names}")


# ---- forward parity, with or without an injected defect ---------------------------------
def prepare(ckpt, inputs: Inputs, tol: float = FORWARD_ATOL, backend: str = "jax"):
    """DLN's prepared port (parity.engine.prepared): the reference's blocks captured once,
    the checkpoint's Flax weights as they are (checked against DLN's tensor table when the
    checkpoint was read), the census only when a defect needs it. backend: which port."""
    from parity.engine.frontend import frontend_for
    from parity.engine.prepared import PreparedPort
    from parity.engine.torch_side import record_torch

    frontend = frontend_for(port_model(ckpt.config, backend))
    torch_model = reference_model(ckpt)
    reference = record_torch(torch_model, inputs.x, block_names(torch_model))
    return PreparedPort(torch_model, frontend, port_variables(frontend, ckpt.flax_params),
                        (inputs.x,), None, None, reference,
                        port_mapping(backend, reference.kinds), tol=tol, chosen=True)


def _run(port, config: DLNConfig, defect: str | None, details: dict, notes: list[str]
         ) -> CheckResult:
    from parity.presets.dln_defects import DEFECTS
    from parity.zoo.mutation import mutant_report

    details = {"config": dataclasses.asdict(config), **details, "defect": None}
    if defect is None:
        return CheckResult(TITLE, details, port.compare(), notes=list(notes))
    if defect not in DEFECTS:
        raise UserError(f"unknown defect {defect!r} (known: {', '.join(DEFECTS)})")
    entry = DEFECTS[defect]
    sites = entry.sites(port)
    if not sites:
        raise UserError(f"defect {defect} does not apply to this network (it needs "
                        f"{', '.join(entry.kinds)}; the config is {config.variant_string()})")
    mutation = entry.mutate(port, sites[0])
    details["defect"] = {"name": defect, "summary": entry.summary,
                         "expected_first_divergence": sites[0].torch_module}
    notes = list(notes) + ([mutation.equivalent] if mutation.equivalent else [])
    return CheckResult(TITLE, details, mutant_report(port, mutation), notes=notes)


def run_parity(ckpt, inputs: Inputs, *, tol: float = FORWARD_ATOL, defect: str | None = None,
               weights_label: str | None = None, backend: str = "jax") -> CheckResult:
    """Every block of the torch reference and the Flax port on ckpt's weights (a
    weights.convert.Checkpoint; its config says which variant both sides run); `defect`
    (a DLN zoo entry) is applied to the JAX side only; backend: the Linen port ("jax")
    or the NNX port ("nnx"), the same report."""
    check_memory(ckpt.config, *inputs.x.shape[:1], *inputs.x.shape[2:])
    details = {"weights": weights_label or str(ckpt.source), "port": _port_name(backend),
               "inputs": {"shape": list(inputs.x.shape), "layout": "NCHW",
                          "description": inputs.description}}
    return _run(prepare(ckpt, inputs, tol, backend), ckpt.config, defect, details,
                list(ckpt.notes))


def _port_name(backend: str) -> str:
    return "port.nnx_model.DLN (Flax NNX)" if backend == "nnx" else "port.model.DLN (Flax Linen)"


def run_fixture(path: str | Path | None = None, *, tol: float | None = None,
                defect: str | None = None, backend: str = "jax") -> CheckResult:
    """The Flax port (Linen "jax" or "nnx") against a DLN fixture's stored torch outputs
    (default: the committed one); no PyTorch import."""
    from parity.engine.fixture import fixture_port, load_fixture

    path = Path(path) if path else default_fixture()
    path = path / FIXTURE_FILE if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"--fixture {path}: no such file (make one with {REGENERATE})")
    fixture = load_fixture(path)
    if "dln_config" not in fixture.extra:
        raise UserError(f"--fixture {path}: not a DLN fixture (no DLN config in it; "
                        "`dln check --fixture` checks any model's)")
    config = DLNConfig.from_json(fixture.extra["dln_config"])
    model = port_model(config, backend)
    if backend == "nnx":  # the fixture's variables under the NNX frontend's keys
        from parity.engine.frontend import frontend_for

        frontend = frontend_for(model)
        fixture = dataclasses.replace(
            fixture, variables=frontend.flat(port_variables(
                frontend, {".".join(k.split("/")[1:]): v for k, v in fixture.variables.items()})),
            mapping=port_mapping(backend, fixture.reference.kinds))
    port = fixture_port(fixture, model, tol=tol, where=str(path))
    x = port.inputs[0]
    details = {"weights": f"{path} (the fixture's)", "port": _port_name(backend),
               "inputs": {"shape": list(x.shape), "layout": "NCHW", "description":
                          f"the fixture's input batch {x.shape[2]}x{x.shape[3]} (stored "
                          f"outputs: {fixture.extra.get('made_by', 'reference_torch')})"}}
    return _run(port, config, defect, details, [])


def save_dln_fixture(path: str | Path) -> Path:
    """Write DLN's fixture: seeded random dim-16 weights, a seeded input batch, and the
    output of every block as reference_torch computes it."""
    import torch

    from parity.engine.fixture import save_fixture
    from weights.convert import checkpoint_from_torch_state
    from weights.synthetic import random_torch_state

    config = FIXTURE_CONFIG
    ckpt = checkpoint_from_torch_state(random_torch_state(config, FIXTURE_WEIGHTS_SEED), config)
    torch_model = reference_model(ckpt)
    x = np.random.default_rng(FIXTURE_INPUT_SEED).random(FIXTURE_SHAPE, dtype=np.float32)
    return save_fixture(path, torch_model, port_model(config), x,
                        torch_modules=block_names(torch_model),
                        extra={"dln_config": config.to_json(), "regenerate": REGENERATE,
                               "made_by": f"reference_torch.model.DLN, torch "
                                          f"{torch.__version__}"})


# ---- gradients ----------------------------------------------------------------------------
def gradient_batch(size: tuple[int, int] = GRADIENT_SIZE, batch: int = 2, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A seeded dark input batch and a brighter, different target (NCHW, float32)."""
    rng = np.random.default_rng(seed)
    x = (rng.random((batch, *size, 3)) * 0.4).astype(np.float32)
    target = np.clip(x * 2.0 + rng.normal(0, 0.05, x.shape), 0, 1).astype(np.float32)
    return (np.ascontiguousarray(x.transpose(0, 3, 1, 2)),
            np.ascontiguousarray(target.transpose(0, 3, 1, 2)))


def run_gradients(ckpt, x: np.ndarray, target: np.ndarray):
    """Gradient parity of the authors' training loss (parity.grads.model_gradients):
    float64 per tensor, one Adam step with the authors' recipe. The JAX side is
    differentiated as the JAX trainer differentiates it on a CPU: through the training
    rewrites (port.fast_training: convolutions with written-out gradients), so the path
    training runs is held to the float64 limit."""
    import torch

    from core.recipe import AUTHORS_RECIPE
    from parity.grads.model_gradients import gradient_parity
    from port.fast_training import fast_training
    from port.losses import dln_loss as flax_loss  # imported before any trace
    from reference_torch.losses import dln_loss
    from weights.rules import plan_conversion

    torch_model = reference_model(ckpt)
    target_t = torch.from_numpy(target)
    return gradient_parity(
        torch_model, port_model(ckpt.config), {"params": ckpt.flax_tree()}, x,
        plan=plan_conversion(torch_model),
        torch_loss=lambda out: dln_loss(out, target_t.to(out.dtype)),
        # a module-level function and a float64 target: it travels to the float64 worker,
        # where a float32 target would round the loss (seen: 4e-8 relative)
        flax_loss=functools.partial(flax_loss, target=np.ascontiguousarray(
            target.transpose(0, 2, 3, 1), np.float64)),
        loss_name=f"dln_loss: {AUTHORS_RECIPE.loss_text()} (authors' training loss)",
        float64=True, adam=AUTHORS_RECIPE, flax_context=fast_training)


if __name__ == "__main__":  # python -m parity.presets.dln --save-fixture FILE
    if len(sys.argv) != 3 or sys.argv[1] != "--save-fixture":
        raise SystemExit(f"usage: {REGENERATE}")
    print(f"wrote {save_dln_fixture(sys.argv[2])}")
