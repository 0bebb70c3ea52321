"""How much memory running DLN on an image takes, and so how each image is run.

Every job that runs the network on images (dln enhance, dln table2, held-out
evaluation) plans each image here, from its header size, before decoding it:
- whole, in JAX's size bucket (core.tiling.bucket_shape of the landscape shape: up to
  25 % more per side, 32 x more pixels for a 1-pixel strip), when the PADDED bucket's
  estimate fits the working budget (core.memory: 80 % of the memory available, at
  most 3 GiB);
- whole at its own size (JAX: one compilation for that shape, no padding; PyTorch
  always runs images at their own size), when only the unpadded estimate fits;
- tiled (core.tiling.run_tiled), stage maps in memory when they fit the budget,
  else in a scratch file, otherwise; `--tile off` refuses an image that fits neither
  way, before anything runs, and `--tile N` always tiles.
"""

from __future__ import annotations

import dataclasses

from core.config import DLNConfig
from core.errors import InputError
from core.memory import MEMORY_FRACTION, working_budget
from core.tiling import (DEFAULT_TILE, bucket_shape, check_tile, landscape, largest_halo,
                         map_bytes, map_channels)
from core.units import format_bytes
from weights.stages import dln_stages

# Peak resident memory of one forward pass, measured with ru_maxrss on this project's
# CPU builds (torch 2.13, jax 0.10.2) at dim 16 / 64 / 128 and 256^2 to 1024^2 pixels:
# the growth per pixel is ~57 * dim bytes for torch and ~35 * dim + 100 for jax
# (torch 3.6 KB/pixel at dim 64, jax 2.5 KB). The figures below round those up;
# they over-estimate every measurement by 0-15 %. The framework itself (~250-290 MiB)
# is already resident when images are checked, so it is not part of the estimate.
# For JAX they apply to the pixels of the padded bucket, which is what it computes.
# The NNX port runs the same XLA programs as the Linen port: one 512x512 forward at
# dim 64 (compilation included) peaked at 1148-1154 MiB against Linen's 1142-1155 MiB
# (two fresh processes each, 2-core AMD EPYC), so it shares JAX's figure.
BYTES_PER_PIXEL_PER_DIM = {"torch": 60, "jax": 40, "nnx": 40}
BYTES_PER_PIXEL_FIXED = 256   # decoded image, float input, output, uint8 copy
# A tiled run keeps per image pixel only the float32 input and output, the uint8
# copy and the decoder's buffer (12 + 12 + 3 + 3 bytes, rounded up); the network's
# working memory is that of one tile, and the stage maps (3 x dim float32 per pixel)
# stay in memory only when they fit the budget, else in a scratch file.
TILED_BYTES_PER_PIXEL = 32


def bytes_per_pixel(config: DLNConfig, backend: str = "torch") -> int:
    return BYTES_PER_PIXEL_PER_DIM.get(backend, 60) * config.dim + BYTES_PER_PIXEL_FIXED


def estimated_bytes(height: int, width: int, config: DLNConfig, backend: str = "torch") -> int:
    """Working memory of one whole-image forward pass over exactly height x width
    pixels (see the measurements above BYTES_PER_PIXEL_PER_DIM)."""
    return int(height) * int(width) * bytes_per_pixel(config, backend)


def tile_working_bytes(config: DLNConfig, backend: str, tile: int = DEFAULT_TILE) -> int:
    """One tile's forward pass (the largest stage input is tile + 2 x the largest halo),
    plus the two sets of map buffers core.tiling.run_tiled reads tiles into by turns
    (the next tile's maps are read while one computes): 2 x 219 MB at tile 512, dim 64."""
    stages = dln_stages(config)
    side = tile + 2 * largest_halo(stages)
    buffers = 2 * map_bytes(side, side, max(stage.reads for stage in stages))
    return estimated_bytes(side, side, config, backend) + buffers


def tiled_estimate(pixels: int, config: DLNConfig, backend: str,
                   tile: int = DEFAULT_TILE) -> int:
    """Memory of a tiled run over `pixels` pixels (stage maps in a scratch file)."""
    return tile_working_bytes(config, backend, tile) + int(pixels) * TILED_BYTES_PER_PIXEL


def parse_tile(text: str) -> str | int:
    """'auto', 'off' or a tile side in pixels."""
    text = str(text).strip().lower()
    if text in ("auto", "off"):
        return text
    try:
        return check_tile(int(text))
    except ValueError:
        raise InputError(f"--tile must be auto, off or a number of pixels, got {text!r}") \
            from None


@dataclasses.dataclass(frozen=True)
class ImagePlan:
    mode: str                          # "whole" or "tiled"
    shape: tuple[int, int] | None = None  # whole: the shape computed (JAX: landscape)
    padded: bool = False               # whole: shape is a padded bucket, not the image's
    tile: int = 0
    maps_in_memory: bool = True
    estimate_bytes: int = 0
    fits: bool = True                  # False: --tile off on an image over the budget

    def describe(self) -> str:
        if self.mode == "whole":
            how = (f"whole image in a {self.shape[0]}x{self.shape[1]} bucket" if self.padded
                   else "whole image")
            return f"{how}, about {format_bytes(self.estimate_bytes)} of working memory"
        where = "in memory" if self.maps_in_memory else "in a scratch file"
        return (f"tiled {self.tile}x{self.tile}, about {format_bytes(self.estimate_bytes)} of "
                f"working memory, stage maps {where}")


def whole_plans(height: int, width: int, config: DLNConfig, backend: str,
                own_size: bool = False) -> list[ImagePlan]:
    """The ways of running the image whole, cheapest first: JAX's padded bucket (unless
    the image fills it, or own_size), then the image's own size."""
    own = landscape(height, width) if backend == "jax" else (int(height), int(width))
    plans = []
    if backend == "jax" and bucket_shape(*own) != own and not own_size:
        bucket = bucket_shape(*own)
        plans.append(ImagePlan("whole", bucket, True,
                               estimate_bytes=estimated_bytes(*bucket, config, backend)))
    plans.append(ImagePlan("whole", own, False,
                           estimate_bytes=estimated_bytes(*own, config, backend)))
    return plans


def plan_image(height: int, width: int, config: DLNConfig, backend: str,
               tile: str | int = "auto", budget: int | None = None,
               own_size: bool = False) -> ImagePlan:
    """How one height x width image runs within `budget` bytes (default: the working
    budget now; see the module docstring); own_size: whole only at its own size."""
    budget = working_budget() if budget is None else budget
    if tile in ("auto", "off"):
        wholes = whole_plans(height, width, config, backend, own_size)
        for plan in wholes:
            if plan.estimate_bytes <= budget:
                return plan
        if tile == "off":
            return dataclasses.replace(wholes[-1], fits=False)
    side = DEFAULT_TILE if tile == "auto" else int(tile)
    fixed = tiled_estimate(height * width, config, backend, side)
    maps = map_bytes(height, width, map_channels(dln_stages(config)))
    in_memory = fixed + maps <= budget
    return ImagePlan("tiled", tile=side, maps_in_memory=in_memory,
                     estimate_bytes=fixed + (maps if in_memory else 0))


def batch_that_fits(plan: ImagePlan, batch: int, budget: int | None = None) -> int:
    """How many images of one whole-image plan run in one forward pass: `batch`, or fewer
    when that many would not fit the budget (at least one)."""
    budget = working_budget() if budget is None else budget
    if plan.mode != "whole" or plan.estimate_bytes <= 0:
        return max(1, batch)
    return max(1, min(int(batch), budget // plan.estimate_bytes))


# Peak resident memory of `dln train`'s step (loss, gradients, Adam), measured with
# `dln bench --workload train` (ru_maxrss of each trainer's fresh worker) on the 2-core
# AMD EPYC at dim 64: JAX (Linen, training rewrites) 894 / 3,362 / 5,978 MiB at
# batch x patch^2 = 2 x 64^2 / 4 x 128^2 / 8 x 128^2, i.e. ~41.8 KB per crop pixel
# (654 bytes per pixel per dim) above ~750 MiB; PyTorch eager 544 / 2,015 / 3,175 MiB,
# ~18.6 KB per pixel (290 per dim) above ~860 MiB. The figures below round those up
# (the NNX trainer runs the same step's XLA program as the Linen one without the
# rewrites: JAX's figure, which the plain step stays under). The fixed part is the
# framework, the weights, Adam's two moments and the data pipeline.
TRAIN_BYTES_PER_PIXEL_PER_DIM = {"torch": 320, "jax": 700, "nnx": 700}
TRAIN_FIXED_BYTES = 1 * 2**30


def training_bytes_per_pixel(config: DLNConfig, framework: str = "jax") -> int:
    """A training step's memory per crop pixel (an unknown framework: the largest)."""
    per_dim = TRAIN_BYTES_PER_PIXEL_PER_DIM.get(framework,
                                                max(TRAIN_BYTES_PER_PIXEL_PER_DIM.values()))
    return per_dim * config.dim


def training_step_bytes(batch: int, patch: int, config: DLNConfig,
                        framework: str = "jax") -> int:
    """Peak memory of one training process at this batch of patch x patch crops."""
    return TRAIN_FIXED_BYTES + int(batch) * int(patch) ** 2 * training_bytes_per_pixel(
        config, framework)


def check_training_memory(batch: int, patch: int, config: DLNConfig, framework: str,
                          available: int | None) -> None:
    """Refuse (InputError, one line, before any data is read or any step traced) a
    training step whose estimate exceeds MEMORY_FRACTION of the memory available
    (cgroup limits included; `available` None: unknown, nothing refused)."""
    if available is None:
        return
    need = training_step_bytes(batch, patch, config, framework)
    room = int(available * MEMORY_FRACTION)
    if need > room:
        fitting = max(0, (room - TRAIN_FIXED_BYTES)
                      // (patch ** 2 * training_bytes_per_pixel(config, framework)))
        hint = (f"--batch {fitting} fits at this patch" if fitting >= 1
                else "a smaller --patch is needed")
        raise InputError(f"--batch {batch} --patch {patch}: a {framework} training step at "
                         f"dim {config.dim} needs about {format_bytes(need)}, more than the "
                         f"{format_bytes(room)} this run may use ({int(MEMORY_FRACTION * 100)}% "
                         f"of the memory available); {hint}")
