"""One parity run: the same weights and inputs through PyTorch and Flax, block by block.

The torch side runs first (the reference, captured with hooks), then the Flax side
(captured with capture_intermediates), optionally with one bug-zoo defect on the
JAX side only. Inputs are seeded random images or image files cropped to a common
size.
"""

from __future__ import annotations

from core.errors import UserError
import dataclasses
import time
from pathlib import Path

import numpy as np

from core.config import DLNConfig
from weights.trees import nest_tree
from parity.engine.block_compare import LayerReport, compare_blocks
from parity.engine.tolerance import FORWARD_ATOL

DEFAULT_SIZE = (45, 67)   # odd and non-square, so that no H/W mix-up can hide
DEFAULT_BATCH = 2         # > 1, so that per-sample reductions (the FA mean) are tested
DEFAULT_SEED = 0
# Both sides keep every block's output: ~(46 dim + 6) float32 values per pixel each.
# Refuse runs that would need more than this, before allocating anything.
MEMORY_BUDGET_BYTES = 8 * 2**30


class ParityInputError(UserError, ValueError):
    """Inputs the harness cannot use (bad size, unreadable or missing images, too big)."""


@dataclasses.dataclass
class ParityInputs:
    x: np.ndarray          # (N, H, W, 3) float32 in [0, 1]
    description: str


@dataclasses.dataclass
class ParityRun:
    layers: LayerReport
    config: DLNConfig            # the reference side's config
    jax_config: DLNConfig        # differs only under a config-level defect
    weights: str
    inputs: ParityInputs
    defect: str | None
    defect_summary: str | None
    notes: list[str]
    seconds: dict[str, float]

    @property
    def passed(self) -> bool:
        return self.layers.passed

    @property
    def first_divergence(self) -> str | None:
        return self.layers.first_divergence


# ---- inputs --------------------------------------------------------------------------------
def random_inputs(size: tuple[int, int] = DEFAULT_SIZE, batch: int = DEFAULT_BATCH,
                  seed: int = DEFAULT_SEED) -> ParityInputs:
    if batch < 1:
        raise ParityInputError(f"batch must be >= 1, got {batch}")
    h, w = size
    x = np.random.default_rng(seed).random((batch, h, w, 3), dtype=np.float32)
    return ParityInputs(x, f"{batch} seeded random image(s) {h}x{w} (seed {seed})")


def image_inputs(paths: list[str], batch: int | None = None) -> ParityInputs:
    """Image files/folders as one batch, centre-cropped to their common size."""
    from core.images import ImageError, list_images, load_image

    files, problems = list_images(paths)
    if problems:
        raise ParityInputError(problems[0])
    if not files:
        raise ParityInputError("no images found in " + ", ".join(map(str, paths)))
    if batch is not None:
        if batch < 1 or batch > len(files):
            raise ParityInputError(f"--batch {batch} but {len(files)} image(s) were given")
        files = files[:batch]
    try:
        images = [load_image(f) for f in files]
    except ImageError as err:
        raise ParityInputError(str(err)) from None
    h = min(im.shape[0] for im in images)
    w = min(im.shape[1] for im in images)
    cropped = []
    for im in images:
        top, left = (im.shape[0] - h) // 2, (im.shape[1] - w) // 2
        cropped.append(im[top:top + h, left:left + w])
    sizes = {im.shape[:2] for im in images}
    crop = f", centre-cropped to {h}x{w}" if len(sizes) > 1 else f" {h}x{w}"
    names = ", ".join(Path(f).name for f in files[:4]) + (" ..." if len(files) > 4 else "")
    return ParityInputs(np.stack(cropped).astype(np.float32), f"{len(files)} image(s){crop}: {names}")


def captured_values_per_pixel(config: DLNConfig) -> int:
    """float32 values one side keeps per input pixel: feat1 2d, feat2 d, per LBP 14 d
    (FA 2 d, three ops 3 d each, two local weights, the block), feature d, out 3, pred 3."""
    return (2 + 1 + 3 * 14 + 1) * config.dim + 6


def check_memory(shape_nhwc: tuple[int, ...], config: DLNConfig) -> int:
    """Bytes both sides' captures need; refuses (before anything is allocated) beyond
    MEMORY_BUDGET_BYTES."""
    n, h, w = shape_nhwc[:3]
    need = 2 * 4 * n * h * w * captured_values_per_pixel(config)
    if need > MEMORY_BUDGET_BYTES:
        raise ParityInputError(
            f"capturing every block of {n} image(s) {h}x{w} at dim {config.dim} needs about "
            f"{need / 2**30:.1f} GiB (limit {MEMORY_BUDGET_BYTES / 2**30:.0f} GiB); use fewer "
            "images (--batch N) or smaller ones")
    return need


# ---- the run -------------------------------------------------------------------------------

@dataclasses.dataclass
class JaxSide:
    config: DLNConfig
    outputs: dict[str, np.ndarray]   # keyed by Flax path
    notes: list[str]
    defect_summary: str | None


def run_jax_side(ckpt, x: np.ndarray, block_names, defect: str | None = None) -> JaxSide:
    """Capture the Flax port's outputs of the named torch blocks, with an optional defect."""
    from parity.zoo import defects as zoo
    from parity.engine.capture import capture_flax, flax_path

    side = zoo.inject(defect, ckpt.config, ckpt.flax_params) if defect else None
    config = side.config if side else ckpt.config
    params = side.params if side else ckpt.flax_params
    outputs = capture_flax(config, nest_tree(params, sep="."), x, interceptor=side.interceptor if side else None,
                           wanted={flax_path(name) for name in block_names})
    return JaxSide(config, outputs, side.notes if side else [],
                   side.defect.summary if side else None)


def run_parity(ckpt, inputs: ParityInputs, tol: float = FORWARD_ATOL, defect: str | None = None,
               weights_label: str | None = None) -> ParityRun:
    """Compare every block of the torch reference and the Flax port on ckpt's weights.

    ckpt: a weights.convert.Checkpoint (its config says which variant both sides run).
    defect: a bug-zoo name; applied to the JAX side only.
    """
    from parity.engine.capture import capture_torch
    from reference_torch.inference import model_from_state

    check_memory(inputs.x.shape, ckpt.config)
    start = time.perf_counter()
    torch_outputs = capture_torch(model_from_state(ckpt.torch_state, ckpt.config), inputs.x)
    seconds = {"torch": time.perf_counter() - start}
    start = time.perf_counter()
    side = run_jax_side(ckpt, inputs.x, list(torch_outputs), defect)
    seconds["jax"] = time.perf_counter() - start
    seconds["total"] = seconds["torch"] + seconds["jax"]
    layers = compare_blocks(torch_outputs, side.outputs, tol)
    return ParityRun(layers, ckpt.config, side.config, weights_label or str(ckpt.source), inputs,
                     defect, side.defect_summary, list(ckpt.notes) + side.notes, seconds)
