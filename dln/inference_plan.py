"""How `dln enhance` runs the network on each image: whole, bucketed or tiled, exactly.

- `--tile off`: the whole image in one forward pass. JAX pads it to its size
  bucket (core.tiling.bucket_shape: each side up to the next of 32, 40, 48, 56, 64,
  80, ..., 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, ...; at most 25 %
  more per side) with masking, and runs a portrait image transposed (with transposed
  kernels) in the landscape bucket, so a folder compiles one shape per landscape
  bucket; an image already on the ladder runs unpadded. PyTorch compiles nothing and
  runs every image at its exact size. Images of one bucket and orientation are
  batched `batch` at a time.
- `--tile N`: stage by stage in N x N tiles (core.tiling.run_tiled), one compiled
  shape per stage for every image.
- `--tile auto` (default): whole when the whole-image estimate fits the working
  budget (the smaller of WHOLE_IMAGE_BUDGET and 80 % of the memory available),
  tiled in DEFAULT_TILE tiles otherwise.
All three give the whole-image result to float32 rounding.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np

from core.config import DLNConfig
from core.errors import InputError
from core.memory import MEMORY_FRACTION, WHOLE_IMAGE_BUDGET, available_memory, working_budget  # noqa: F401
from core.progress import progress
from core.atomic_files import write_text_atomic
from core.tiling import (DEFAULT_TILE, HALO_LBP, TiledPlan, check_tile, landscape,
                         map_bytes, plan_buckets, run_tiled, smallest_cover, tile_count)

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


# A new bucket shape costs JAX one compilation of the whole-image program. Measured
# with `dln bench --workload folder` on the 2-core AMD EPYC (5 buckets): the cold run
# took 4.1 s longer than the warm one, ~0.8 s per compilation, while computing took
# ~7.4 s per megapixel (31.8 s for 4.3 MP of padded buckets): one compilation is worth
# ~110,000 pixels. The folder planner (core.tiling.plan_buckets) merges buckets while
# the padding a merger adds costs less than the compilations it saves.
COMPILE_PIXELS = 110_000
BUCKET_INDEX = "buckets.json"   # in the cache folder: shapes compiled there before


class BucketIndex:
    """The whole-image bucket shapes compiled into one persistent cache folder, per
    config and batch size, so a later plan counts them as free (a warm cache)."""

    def __init__(self, folder: Path, config: DLNConfig):
        import jax

        self.path = Path(folder) / BUCKET_INDEX
        self.key = f"jax-{jax.__version__}-{config.to_json()}"
        self._known: set[tuple[int, int, int]] = set()  # entries seen on disk this process

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def compiled(self, batch: int) -> set[tuple[int, int]]:
        entries = self._read().get(self.key, [])
        return {(int(h), int(w)) for n, h, w in entries if int(n) == batch}

    def add(self, batch: int, bucket: tuple[int, int]) -> None:
        entry = (int(batch), int(bucket[0]), int(bucket[1]))
        if entry in self._known:  # every later batch of a bucket: no read, no write
            return
        data = self._read()
        entries = {tuple(e) for e in data.get(self.key, [])}
        self._known.add(entry)
        if entry in entries:
            return
        data[self.key] = sorted(entries | {entry})
        try:
            write_text_atomic(self.path, json.dumps(data))
        except OSError:
            pass  # a read-only cache folder only loses the hint


class Engine:
    """One backend's stages plus the whole-image paths, for a checkpoint."""

    def __init__(self, ckpt, backend: str, use_cache: bool = True,
                 cache_dir: str | os.PathLike | None = None):
        self.backend = backend
        self.config = ckpt.config
        self._buckets: list[tuple[int, int]] = []
        self._index = None
        if backend == "jax":
            if use_cache:
                from port.tiled import enable_compilation_cache
                folder = Path(cache_dir or compilation_cache_dir())
                enable_compilation_cache(folder)
                self._index = BucketIndex(folder, ckpt.config)
            from port.tiled import JaxStages, JaxWholeImage
            self.stages = JaxStages(ckpt.flax_tree(), ckpt.config)
            self._whole = JaxWholeImage(self.stages)
        elif backend in ("torch", "torch-compile"):
            from reference_torch.tiled import TorchStages
            self.stages = TorchStages(ckpt.torch_state, ckpt.config,
                                      compile_whole=backend == "torch-compile")
        else:
            raise InputError(f"unknown backend {backend!r} (choose from jax, torch, "
                             "torch-compile)")

    def plan_folder(self, shapes: list[tuple[int, int]], batch: int = 1) -> list:
        """JAX: choose the bucket shapes for the whole images of a folder (their header
        sizes) with core.tiling.plan_buckets, counting shapes this cache folder has
        compiled before as free. PyTorch compiles nothing: no plan."""
        if self.backend != "jax" or not shapes:
            return []
        compiled = self._index.compiled(batch) if self._index else set()
        most = working_budget() // bytes_per_pixel(self.config, "jax")
        self._buckets = plan_buckets([landscape(*s) for s in shapes], COMPILE_PIXELS,
                                     compiled, most)
        return list(self._buckets)

    def group_key(self, height: int, width: int) -> tuple:
        """Whole images with one key run in one batch: JAX's planned bucket (or the
        image's own ladder bucket) and orientation; PyTorch runs each image at its own
        size."""
        if self.backend != "jax":
            return (height, width)
        from port.tiled import whole_group_key

        planned = smallest_cover(self._buckets, landscape(height, width))
        return planned + (height > width,) if planned else whole_group_key(height, width)

    def whole(self, images: list[np.ndarray], key: tuple | None = None) -> list[np.ndarray]:
        """Images of one group_key, whole; outputs cropped to each image."""
        if self.backend != "jax":
            return [self.stages.whole(im) for im in images]
        key = key or self.group_key(*images[0].shape[:2])
        outputs = self._whole.run(images, key[:2])
        if self._index:
            self._index.add(len(images), key[:2])
        return outputs

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
