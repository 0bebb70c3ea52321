"""`dln enhance`: images in, enhanced PNGs out, with either backend.

Per image, in this order, each failure one line in `failures` while the others go on:
1. its output name must be free: not an input of the run, not the output of an
   earlier input (core.run_outputs, decided for all images before any is written),
   and not an existing file unless overwrite=True;
2. the header's pixel count must be within the limit (--max-pixels, or by default
   the smaller of DEFAULT_MAX_PIXELS and what a tiled run fits in 80 % of the memory
   available), refused before decoding;
3. it must decode (core.images.load_image);
4. the network runs whole, bucketed or tiled (dln.inference_plan: all three equal
   the whole-image forward to float32 rounding); its output must be finite;
5. the PNG is written atomically (never half-written, never clobbering a file
   that appeared meanwhile unless overwrite=True).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

import numpy as np

from core.config import DLNConfig
from core.errors import InputError
from core.images import (DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, ImageError, ImageTooLargeError,
                         OutputExistsError, header_size, list_images, load_image, quantize,
                         write_png_atomic)
from core.progress import progress
from core.run_outputs import refused_outputs
from dln.inference_plan import (BYTES_PER_PIXEL_PER_DIM, MEMORY_FRACTION,  # noqa: F401
                                TILED_BYTES_PER_PIXEL, Engine, available_memory,
                                bytes_per_pixel, estimated_bytes, plan_image,
                                tile_working_bytes)

BACKENDS = ("jax", "torch")


@dataclasses.dataclass
class EnhanceResult:
    written: list[Path]
    skipped: list[Path]
    failures: list[str]
    notes: list[str] = dataclasses.field(default_factory=list)  # how big images were run

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclasses.dataclass(frozen=True)
class PixelLimit:
    pixels: int
    reason: str   # how the limit was set, for the refusal line


def pixel_limit(config: DLNConfig, backend: str, max_pixels: int | None = None) -> PixelLimit:
    """--max-pixels when given; else the smaller of DEFAULT_MAX_PIXELS and what a
    tiled run fits in MEMORY_FRACTION of the memory available now (one tile's working
    memory plus TILED_BYTES_PER_PIXEL per pixel; the stage maps go to a scratch file)."""
    if max_pixels is not None:
        return PixelLimit(int(max_pixels), "set by --max-pixels")
    available = available_memory()
    if available is None:
        return PixelLimit(DEFAULT_MAX_PIXELS, "the default --max-pixels")
    room = int(available * MEMORY_FRACTION) - tile_working_bytes(config, backend)
    fits = room // TILED_BYTES_PER_PIXEL
    if fits >= DEFAULT_MAX_PIXELS:
        return PixelLimit(DEFAULT_MAX_PIXELS, "the default --max-pixels")
    return PixelLimit(max(fits, 1), f"what fits in {MEMORY_FRACTION:.0%} of the "
                                    f"{_gib(available)} of memory available")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def too_large_line(err: ImageTooLargeError, config: DLNConfig, backend: str,
                   limit: PixelLimit) -> str:
    need = tiled_estimate(err.pixels, config, backend)
    size = f"{err.size[0]}x{err.size[1]} = " if err.size else ""
    return (f"{err.path}: refused before decoding: {size}{err.pixels / 1e6:.2f} MP would need "
            f"about {_gib(need)} for the tiled {backend} forward pass (dim {config.dim}); the "
            f"limit is {limit.pixels / 1e6:.2f} MP (about "
            f"{_gib(tiled_estimate(limit.pixels, config, backend))}, {limit.reason}); "
            "--max-pixels changes it")


def tiled_estimate(pixels: int, config: DLNConfig, backend: str) -> int:
    """Memory of a tiled run over `pixels` pixels (stage maps in a scratch file)."""
    return tile_working_bytes(config, backend) + int(pixels) * TILED_BYTES_PER_PIXEL


def _prepare_output_dir(output_dir: Path) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ImageError(f"{output_dir}: exists and is not a folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ImageError(f"{output_dir}: cannot create the output folder "
                         f"({err.strerror or err})") from None


def enhance_paths(ckpt, inputs: list[str | os.PathLike], output_dir: str | os.PathLike,
                  backend: str = "jax", overwrite: bool = False,
                  max_pixels: int | None = None, show_progress: bool = True,
                  tile: str | int = "auto", batch: int = 1, use_cache: bool = True,
                  cache_dir: str | os.PathLike | None = None) -> EnhanceResult:
    """Enhance every image named by `inputs` (files or folders) into output_dir/<stem>.png.

    tile: "auto", "off" or a tile side (dln.inference_plan); batch: whole images of one
    size bucket per forward pass; use_cache: JAX's persistent compilation cache in
    cache_dir (default dln.inference_plan.compilation_cache_dir()).
    No image at all among the inputs is an InputError (exit 2)."""
    if batch < 1:
        raise InputError(f"--batch must be at least 1, got {batch}")
    output_dir = Path(output_dir)
    paths, failures = list_images(inputs)
    if not paths:
        named = "; ".join(failures) if failures else \
            f"no {', '.join(s[1:] for s in IMAGE_SUFFIXES)} files in {', '.join(map(str, inputs))}"
        raise InputError(f"nothing to enhance: {named}")
    _prepare_output_dir(output_dir)
    engine = Engine(ckpt, backend, use_cache=use_cache, cache_dir=cache_dir)
    limit = pixel_limit(ckpt.config, backend, max_pixels)
    result = EnhanceResult([], [], failures)
    engine.plan_folder(_whole_image_sizes(paths, ckpt.config, backend, tile, limit.pixels),
                       batch)
    pending: dict[tuple, list] = {}
    refused = refused_outputs((path, output_dir / f"{path.stem}.png") for path in paths)
    result.failures += refused.values()  # decided for the whole run before any write
    for path in progress(paths, desc="enhance", unit="img", disable=not show_progress):
        dst = output_dir / f"{path.stem}.png"
        if path in refused or not _output_free(path, dst, overwrite, result):
            continue
        try:
            image = load_image(path, max_pixels=limit.pixels)
        except ImageTooLargeError as err:
            result.failures.append(too_large_line(err, ckpt.config, backend, limit))
            continue
        except ImageError as err:
            result.failures.append(str(err))
            continue
        plan = plan_image(image.shape[0], image.shape[1], ckpt.config, backend, tile)
        if plan.mode == "tiled":
            result.notes.append(f"{path}: {image.shape[0]}x{image.shape[1]}, {plan.describe()}")
            _finish(result, [(path, dst)], overwrite,
                    lambda: [engine.tiled(image, plan, show_progress, path.name)])
            continue
        key = engine.group_key(*image.shape[:2])
        group = pending.setdefault(key, [])
        group.append((path, dst, image))
        if len(group) >= batch:
            _flush(engine, key, group, result, overwrite)
    for key, group in pending.items():
        _flush(engine, key, group, result, overwrite)
    return result


def _whole_image_sizes(paths: list[Path], config: DLNConfig, backend: str, tile,
                       max_pixels: int | None) -> list[tuple[int, int]]:
    """Header sizes of the images that will run whole (for the JAX bucket plan)."""
    sizes = []
    for path in paths:
        size = header_size(path)
        if size and (max_pixels is None or size[0] * size[1] <= max_pixels) and \
                plan_image(*size, config, backend, tile).mode == "whole":
            sizes.append(size)
    return sizes


def _output_free(path: Path, dst: Path, overwrite: bool, result: "EnhanceResult") -> bool:
    if not overwrite and (dst.exists() or dst.is_symlink()):
        result.skipped.append(dst)
        result.failures.append(f"{path}: not enhanced: {dst} exists (--overwrite replaces it)")
        return False
    return True


def _flush(engine: Engine, key: tuple, group: list, result: "EnhanceResult",
           overwrite: bool) -> None:
    if group:
        images = [image for _, _, image in group]
        _finish(result, [(path, dst) for path, dst, _ in group], overwrite,
                lambda: engine.whole(images, key))
        group.clear()


def _finish(result: "EnhanceResult", targets: list[tuple[Path, Path]], overwrite: bool,
            forward: Callable[[], list[np.ndarray]]) -> None:
    """Run forward() for the targets' images and write each output PNG."""
    try:
        outputs = _run_network(forward, targets[0][0] if len(targets) == 1 else
                               ", ".join(str(p) for p, _ in targets))
    except ImageError as err:
        result.failures.append(str(err))
        return
    for (path, dst), output in zip(targets, outputs):
        if not np.all(np.isfinite(output)):
            result.failures.append(f"{path}: the network's output holds NaN or Inf (weights "
                                   "too large for float32?); nothing written")
            continue
        try:
            write_png_atomic(quantize(output), dst, overwrite=overwrite)
            result.written.append(dst)
        except OutputExistsError:
            result.skipped.append(dst)
            result.failures.append(f"{path}: not enhanced: {dst} appeared meanwhile "
                                   "(--overwrite replaces it)")
        except ImageError as err:
            result.failures.append(str(err))


def _run_network(forward: Callable[[], list[np.ndarray]], what) -> list[np.ndarray]:
    try:
        return forward()
    except InputError as err:  # e.g. no room for the scratch file of a tiled run
        raise ImageError(f"{what}: {err}") from None
    except MemoryError:
        raise ImageError(f"{what}: out of memory in the forward pass (try --tile 256 or a "
                         "smaller --max-pixels)") from None
    except Exception as err:  # noqa: BLE001 - e.g. an accelerator out of memory
        text = " ".join(str(err).split())[:160]
        raise ImageError(f"{what}: the forward pass failed ({type(err).__name__}: {text})") \
            from None
