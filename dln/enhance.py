"""`dln enhance`: images in, enhanced PNGs out, with either backend.

Per image, in this order, each failure one line in `failures` while the others go on:
1. its output name must be free: not taken by an earlier input with the same stem,
   not the input itself, and not an existing file unless overwrite=True;
2. the header's pixel count must be within the limit (--max-pixels, or by default
   what fits in 80 % of the memory available), refused before decoding;
3. it must decode (core.images.load_image);
4. the network's output must be finite;
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
from core.images import (DEFAULT_MAX_PIXELS, ImageError, ImageTooLargeError, OutputExistsError,
                        list_images, load_image, quantize, write_png_atomic)
from core.progress import progress

BACKENDS = ("jax", "torch")
# Peak resident memory of one forward pass, measured with ru_maxrss on this project's
# CPU builds (torch 2.13, jax 0.10.2) at dim 16 / 64 / 128 and 256^2 to 1024^2 pixels:
# the growth per pixel is ~57 * dim bytes for torch and ~35 * dim + 100 for jax
# (torch 3.6 KB/pixel at dim 64, jax 2.5 KB). The figures below round those up;
# they over-estimate every measurement by 0-15 %. The framework itself (~250-290 MiB)
# is already resident when images are checked, so it is not part of the estimate.
BYTES_PER_PIXEL_PER_DIM = {"torch": 60, "jax": 40}
BYTES_PER_PIXEL_FIXED = 256   # decoded image, float input, output, uint8 copy
MEMORY_FRACTION = 0.8         # of what is available, to leave room for everything else


@dataclasses.dataclass
class EnhanceResult:
    written: list[Path]
    skipped: list[Path]
    failures: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures


def make_enhancer(ckpt, backend: str) -> Callable[[np.ndarray], np.ndarray]:
    if backend == "jax":
        from port.inference import make_enhancer as make_jax
        return make_jax(ckpt.flax_tree(), ckpt.config)
    if backend == "torch":
        from reference_torch.inference import make_enhancer as make_torch
        return make_torch(ckpt.torch_state, ckpt.config)
    raise ValueError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")


def bytes_per_pixel(config: DLNConfig, backend: str = "torch") -> int:
    return BYTES_PER_PIXEL_PER_DIM.get(backend, 60) * config.dim + BYTES_PER_PIXEL_FIXED


def estimated_bytes(height: int, width: int, config: DLNConfig, backend: str = "torch") -> int:
    """Working memory of one forward pass over an height x width image (see the
    measurements above BYTES_PER_PIXEL_PER_DIM); torch, the larger, by default."""
    return int(height) * int(width) * bytes_per_pixel(config, backend)


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


@dataclasses.dataclass(frozen=True)
class PixelLimit:
    pixels: int
    reason: str   # how the limit was set, for the refusal line


def pixel_limit(config: DLNConfig, backend: str, max_pixels: int | None = None) -> PixelLimit:
    """--max-pixels when given; else the smaller of DEFAULT_MAX_PIXELS and what fits
    in MEMORY_FRACTION of the memory available now."""
    if max_pixels is not None:
        return PixelLimit(int(max_pixels), "set by --max-pixels")
    available = available_memory()
    if available is None:
        return PixelLimit(DEFAULT_MAX_PIXELS, "the default --max-pixels")
    fits = int(available * MEMORY_FRACTION) // bytes_per_pixel(config, backend)
    if fits >= DEFAULT_MAX_PIXELS:
        return PixelLimit(DEFAULT_MAX_PIXELS, "the default --max-pixels")
    return PixelLimit(max(fits, 1), f"what fits in {MEMORY_FRACTION:.0%} of the "
                                    f"{_gib(available)} of memory available")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def too_large_line(err: ImageTooLargeError, config: DLNConfig, backend: str,
                   limit: PixelLimit) -> str:
    need = err.pixels * bytes_per_pixel(config, backend)
    size = f"{err.size[0]}x{err.size[1]} = " if err.size else ""
    return (f"{err.path}: refused before decoding: {size}{err.pixels / 1e6:.2f} MP would need "
            f"about {_gib(need)} for the {backend} forward pass (dim {config.dim}); the limit "
            f"is {limit.pixels / 1e6:.2f} MP (about "
            f"{_gib(limit.pixels * bytes_per_pixel(config, backend))}, {limit.reason}); "
            "--max-pixels changes it")


def _prepare_output_dir(output_dir: Path) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ImageError(f"{output_dir}: exists and is not a folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ImageError(f"{output_dir}: cannot create the output folder "
                         f"({err.strerror or err})") from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def enhance_paths(ckpt, inputs: list[str | os.PathLike], output_dir: str | os.PathLike,
                  backend: str = "jax", overwrite: bool = False,
                  max_pixels: int | None = None, show_progress: bool = True,
                  ) -> EnhanceResult:
    """Enhance every image named by `inputs` (files or folders) into output_dir/<stem>.png."""
    output_dir = Path(output_dir)
    _prepare_output_dir(output_dir)
    paths, failures = list_images(inputs)
    enhance = make_enhancer(ckpt, backend)
    limit = pixel_limit(ckpt.config, backend, max_pixels)
    written: list[Path] = []
    skipped: list[Path] = []
    seen: dict[str, Path] = {}
    for path in progress(paths, desc="enhance", unit="img", disable=not show_progress):
        dst = output_dir / f"{path.stem}.png"
        if path.stem in seen:
            failures.append(f"{path}: output name {dst.name} already used by {seen[path.stem]}")
            continue
        seen[path.stem] = path
        if _same_file(path, dst):
            failures.append(f"{path}: refused: the output {dst} would replace this input")
            continue
        if not overwrite and (dst.exists() or dst.is_symlink()):
            skipped.append(dst)
            failures.append(f"{path}: not enhanced: {dst} exists (--overwrite replaces it)")
            continue
        try:
            image = load_image(path, max_pixels=limit.pixels)
            output = _run_network(enhance, image, path)
            write_png_atomic(quantize(output), dst, overwrite=overwrite)
            written.append(dst)
        except ImageTooLargeError as err:
            failures.append(too_large_line(err, ckpt.config, backend, limit))
        except OutputExistsError:
            skipped.append(dst)
            failures.append(f"{path}: not enhanced: {dst} appeared meanwhile (--overwrite "
                            "replaces it)")
        except ImageError as err:
            failures.append(str(err))
    return EnhanceResult(written, skipped, failures)


def _run_network(enhance: Callable[[np.ndarray], np.ndarray], image: np.ndarray,
                 path: Path) -> np.ndarray:
    try:
        output = enhance(image)
    except MemoryError:
        raise ImageError(f"{path}: out of memory in the forward pass (try a smaller "
                         "--max-pixels)") from None
    except Exception as err:  # noqa: BLE001 - e.g. an accelerator out of memory
        text = " ".join(str(err).split())[:160]
        raise ImageError(f"{path}: the forward pass failed ({type(err).__name__}: {text})") \
            from None
    if not np.all(np.isfinite(output)):
        raise ImageError(f"{path}: the network's output holds NaN or Inf (weights too large "
                         "for float32?); nothing written")
    return output
