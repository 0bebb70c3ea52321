"""How `dln enhance` runs the network on each image: whole, bucketed or tiled, exactly.

- `--tile off`: the whole image in one forward pass. JAX pads it to its size
  bucket (core.tiling.bucket_shape: each side up to the next of 32, 40, 48, 56, 64,
  80, ..., 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, ...; at most 25 %
  more per side) with masking, so a folder compiles one shape per bucket; an image
  already on the ladder runs unpadded. PyTorch compiles nothing and runs the exact
  size. Images of one bucket are batched `batch` at a time (both backends).
- `--tile N`: stage by stage in N x N tiles (core.tiling.run_tiled), one compiled
  shape per stage for every image.
- `--tile auto` (default): whole when the whole-image estimate fits the working
  budget (the smaller of WHOLE_IMAGE_BUDGET and 80 % of the memory available),
  tiled in DEFAULT_TILE tiles otherwise.
All three give the whole-image result to float32 rounding.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import numpy as np

from core.config import DLNConfig
from core.errors import InputError
from core.progress import progress
from core.tiling import (DEFAULT_TILE, HALO_LBP, TiledPlan, bucket_batch, bucket_shape,
                         check_tile, map_bytes, run_tiled, tile_count)

# Peak resident memory of one forward pass, measured with ru_maxrss on this project's
# CPU builds (torch 2.13, jax 0.10.2) at dim 16 / 64 / 128 and 256^2 to 1024^2 pixels:
# the growth per pixel is ~57 * dim bytes for torch and ~35 * dim + 100 for jax
# (torch 3.6 KB/pixel at dim 64, jax 2.5 KB). The figures below round those up;
# they over-estimate every measurement by 0-15 %. The framework itself (~250-290 MiB)
# is already resident when images are checked, so it is not part of the estimate.
BYTES_PER_PIXEL_PER_DIM = {"torch": 60, "jax": 40}
BYTES_PER_PIXEL_FIXED = 256   # decoded image, float input, output, uint8 copy
# A tiled run keeps per image pixel only the float32 input and output, the uint8
# copy and the decoder's buffer (12 + 12 + 3 + 3 bytes, rounded up); the network's
# working memory is that of one tile, and the stage maps (4 x dim float32 per pixel)
# stay in memory only when they fit the budget, else in a scratch file.
TILED_BYTES_PER_PIXEL = 32
MEMORY_FRACTION = 0.8         # of what is available, to leave room for everything else
WHOLE_IMAGE_BUDGET = 3 * 2**30  # auto runs an image whole when its estimate fits this


def bytes_per_pixel(config: DLNConfig, backend: str = "torch") -> int:
    return BYTES_PER_PIXEL_PER_DIM.get(backend, 60) * config.dim + BYTES_PER_PIXEL_FIXED


def estimated_bytes(height: int, width: int, config: DLNConfig, backend: str = "torch") -> int:
    """Working memory of one whole-image forward pass over height x width (see the
    measurements above BYTES_PER_PIXEL_PER_DIM); torch, the larger, by default."""
    return int(height) * int(width) * bytes_per_pixel(config, backend)


def tile_working_bytes(config: DLNConfig, backend: str, tile: int = DEFAULT_TILE) -> int:
    """One tile's forward pass: the largest stage input is tile + 2 x the LBP halo."""
    side = tile + 2 * HALO_LBP
    return estimated_bytes(side, side, config, backend)


def available_memory() -> int | None:
    """Bytes this process may still allocate: MemAvailable, lowered by a cgroup
    (container) limit when there is one; None where neither can be read."""
    found = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            found.append(max(0, int(limit) - int(used)))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def working_budget() -> int:
    available = available_memory()
    if available is None:
        return WHOLE_IMAGE_BUDGET
    return min(WHOLE_IMAGE_BUDGET, int(available * MEMORY_FRACTION))


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
    mode: str          # "whole" or "tiled"
    tile: int = 0
    maps_in_memory: bool = True
    estimate_bytes: int = 0

    def describe(self) -> str:
        if self.mode == "whole":
            return f"whole image, about {_mib(self.estimate_bytes)} of working memory"
        where = "in memory" if self.maps_in_memory else "in a scratch file"
        return (f"tiled {self.tile}x{self.tile}, about {_mib(self.estimate_bytes)} of "
                f"working memory, stage maps {where}")


def _mib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def plan_image(height: int, width: int, config: DLNConfig, backend: str,
               tile: str | int = "auto", budget: int | None = None) -> ImagePlan:
    budget = working_budget() if budget is None else budget
    whole = estimated_bytes(height, width, config, backend)
    if tile == "off" or (tile == "auto" and whole <= budget):
        return ImagePlan("whole", estimate_bytes=whole)
    side = DEFAULT_TILE if tile == "auto" else int(tile)
    fixed = tile_working_bytes(config, backend, side) + height * width * TILED_BYTES_PER_PIXEL
    maps = map_bytes(height, width, config.dim)
    in_memory = fixed + maps <= budget
    return ImagePlan("tiled", side, in_memory, fixed + (maps if in_memory else 0))


def compilation_cache_dir() -> Path:
    """$DLN_CACHE_DIR, else $XDG_CACHE_HOME/dln-port/jax, else ~/.cache/dln-port/jax."""
    if os.environ.get("DLN_CACHE_DIR"):
        return Path(os.environ["DLN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dln-port" / "jax"


class Engine:
    """One backend's stages plus the whole-image paths, for a checkpoint."""

    def __init__(self, ckpt, backend: str, use_cache: bool = True,
                 cache_dir: str | os.PathLike | None = None):
        self.backend = backend
        self.config = ckpt.config
        if backend == "jax":
            if use_cache:
                from port.tiled import enable_compilation_cache
                enable_compilation_cache(cache_dir or compilation_cache_dir())
            from port.inference import make_apply, params_to_device
            from port.tiled import JaxStages
            self.stages = JaxStages(ckpt.flax_tree(), ckpt.config)
            self._plain = make_apply(ckpt.config)
            self._params = params_to_device(ckpt.flax_tree())
        elif backend in ("torch", "torch-compile"):
            from reference_torch.tiled import TorchStages
            self.stages = TorchStages(ckpt.torch_state, ckpt.config,
                                      compile_whole=backend == "torch-compile")
        else:
            raise InputError(f"unknown backend {backend!r} (choose from jax, torch, "
                             "torch-compile)")

    def whole(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Images of one bucket, whole, in one batch; outputs cropped to each image."""
        if self.backend != "jax":  # nothing to compile or shapes compiled as they come: every image at its own size
            return [self.stages.whole(im) for im in images]
        shape = images[0].shape[:2]
        exact = all(im.shape[:2] == shape for im in images)
        if self.backend == "jax" and exact and bucket_shape(*shape) == shape:
            out = np.asarray(self._plain(self._params, np.stack(images).astype(np.float32)))
            return list(out)
        x, mask = bucket_batch(images)
        out = self.stages.bucket(x, mask)
        return [o[:im.shape[0], :im.shape[1]] for o, im in zip(out, images)]

    def tiled(self, image: np.ndarray, plan: ImagePlan, show_progress: bool = True,
              label: str = "") -> np.ndarray:
        total = 5 * tile_count(image.shape[0], image.shape[1], plan.tile)
        quiet = not show_progress or not sys.stderr.isatty()
        bar = progress(None, desc=f"tiles {label}".strip(), unit="tile", total=total,
                       disable=quiet)
        try:
            return run_tiled(self.stages, image, TiledPlan(plan.tile, plan.maps_in_memory),
                             on_tile=lambda: bar.update(1))
        finally:
            bar.close()
