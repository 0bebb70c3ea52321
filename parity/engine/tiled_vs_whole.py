"""Tiled and bucketed inference against the whole-image forward, in every framework
(JAX's two ports, Flax Linen "jax" and Flax NNX "nnx", and PyTorch).

For one image and one checkpoint, each framework's stage-wise paths (core.tiling:
tiles with halos and masks, memory or memmap stage maps; size buckets with masks)
and JAX's whole-image runner of `dln enhance` (buckets, portrait images transposed)
are compared with that framework's own unmodified whole-image forward
(port.inference / port.nnx_inference / reference_torch.inference), as float32
outputs (tolerance TILED_FORWARD_ATOL, relative to max(1, max|reference|)) and as
PNGs (the one-level rule of PNG_MAX_FRACTION_OFF_BY_ONE).
"""

from __future__ import annotations

import numpy as np

from core.images import quantize
from core.tiling import TiledPlan, bucket_batch, run_tiled
from parity.engine.tolerance import (PNG_MAX_FRACTION_OFF_BY_ONE, TILED_FORWARD_ATOL,
                                     measure)


def _framework(ckpt, backend: str):
    """(stage runner, plain whole-image enhancer) of one framework."""
    if backend == "jax":
        from port.inference import make_enhancer
        from port.tiled import JaxStages
        return JaxStages(ckpt.flax_tree(), ckpt.config), make_enhancer(ckpt.flax_tree(),
                                                                       ckpt.config)
    if backend == "nnx":
        from port.nnx_inference import make_nnx_enhancer
        from port.nnx_tiled import NnxStages
        return NnxStages(ckpt.flax_tree(), ckpt.config), make_nnx_enhancer(ckpt.flax_tree(),
                                                                           ckpt.config)
    if backend == "torch":
        from reference_torch.inference import make_enhancer
        from reference_torch.tiled import TorchStages
        return TorchStages(ckpt.torch_state, ckpt.config), make_enhancer(ckpt.torch_state,
                                                                         ckpt.config)
    raise ValueError(f"unknown backend {backend!r}")


def _png_fraction(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    diff = np.abs(quantize(a).astype(np.int16) - quantize(b).astype(np.int16))
    return int(diff.max()), float(np.count_nonzero(diff)) / diff.size


def compare_tiled_with_whole(ckpt, image: np.ndarray, tiles: tuple[int, ...],
                             backends: tuple[str, ...] = ("jax", "torch"),
                             maps_in_memory: tuple[bool, ...] = (True, False),
                             bucket: bool = True) -> list[dict]:
    """One row per (backend, path): max error relative to scale, PNG agreement, pass."""
    rows = []
    for backend in backends:
        stages, whole = _framework(ckpt, backend)
        reference = whole(image)
        candidates = {}
        for tile in tiles:
            for in_memory in maps_in_memory:
                where = "memory" if in_memory else "memmap"
                candidates[f"tile {tile} ({where})"] = run_tiled(
                    stages, image, TiledPlan(tile=tile, maps_in_memory=in_memory))
        if bucket and backend in ("jax", "nnx"):
            # what `dln enhance --tile off` runs: the bucket, unmasked when the image is
            # a bucket shape, a portrait image transposed with transposed kernels
            from port.tiled import JaxWholeImage, whole_group_key
            bh, bw, transposed = whole_group_key(*image.shape[:2])
            label = f"whole {bh}x{bw}" + (" transposed" if transposed else "")
            candidates[label] = JaxWholeImage(stages).run([image])[0]
        if bucket:
            x, mask = bucket_batch([image])
            out = stages.bucket(x, mask)[0]
            candidates[f"bucket {x.shape[1]}x{x.shape[2]}"] = out[:image.shape[0],
                                                                  :image.shape[1]]
        for path, output in candidates.items():
            result = measure(output, reference, TILED_FORWARD_ATOL)
            worst, fraction = _png_fraction(output, reference)
            png_ok = worst <= 1 and fraction <= PNG_MAX_FRACTION_OFF_BY_ONE
            rows.append({"backend": backend, "path": path, "max_abs": result.max_abs,
                         "rel_to_scale": result.rel_to_scale, "png_worst_levels": worst,
                         "png_fraction_off": fraction,
                         "passed": bool(result.passed and png_ok)})
    return rows
