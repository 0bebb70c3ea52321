"""`dln enhance`: images in, enhanced PNGs out, with either backend."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

import numpy as np

from dln.config import DLNConfig
from dln.images import (DEFAULT_MAX_PIXELS, ImageError, list_images, load_image, quantize,
                        write_png_atomic)
from dln.progress import progress

BACKENDS = ("jax", "torch")


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


def estimated_bytes(height: int, width: int, config: DLNConfig) -> int:
    """Rough peak memory of one forward pass: the widest live activations.

    At the widest point the concatenation of f1, o1, o2, o3 (4 dim channels) and
    the feature map coexist with the LBP intermediates: about 12 * dim float32
    values per pixel.
    """
    return int(height * width * 12 * config.dim * 4)


def enhance_paths(ckpt, inputs: list[str | os.PathLike], output_dir: str | os.PathLike,
                  backend: str = "jax", overwrite: bool = False,
                  max_pixels: int = DEFAULT_MAX_PIXELS, show_progress: bool = True,
                  ) -> EnhanceResult:
    """Enhance every image named by `inputs` (files or folders) into output_dir/<stem>.png."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths, failures = list_images(inputs)
    enhance = make_enhancer(ckpt, backend)
    written: list[Path] = []
    skipped: list[Path] = []
    seen: dict[str, Path] = {}
    for path in progress(paths, desc="enhance", unit="img", disable=not show_progress):
        dst = output_dir / f"{path.stem}.png"
        if path.stem in seen:
            failures.append(f"{path}: output name {dst.name} already used by {seen[path.stem]}")
            continue
        seen[path.stem] = path
        if dst.exists() and not overwrite:
            skipped.append(dst)
            failures.append(f"{path}: {dst} exists (use --overwrite to replace it)")
            continue
        try:
            image = load_image(path)
            h, w = image.shape[:2]
            if h * w > max_pixels:
                raise ImageError(
                    f"{path}: {w}x{h} = {h * w} pixels exceeds --max-pixels {max_pixels} "
                    f"(needs about {estimated_bytes(h, w, ckpt.config) / 2**30:.1f} GiB)")
            write_png_atomic(quantize(enhance(image)), dst)
            written.append(dst)
        except ImageError as err:
            failures.append(str(err))
    return EnhanceResult(written, skipped, failures)
