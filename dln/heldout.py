"""Held-out evaluation the authors' way: enhance, quantise (x255, clip, truncate), PSNR.

Framework-neutral: it takes any function from an RGB float32 HWC image in [0, 1] to
the network's float32 output, so the JAX and PyTorch trainers report the same numbers.
PSNR (core.evaluation.psnr_uint8) has data range 255 on uint8 images, per image, then
averaged (as the authors).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from core.data import to_float
from core.evaluation import psnr_uint8
from core.image_pairs import ImagePair
from core.images import quantize


@dataclasses.dataclass
class HeldoutResult:
    names: list[str]
    psnr_low: list[float]       # the low-light input against the reference
    psnr_enhanced: list[float]  # the network's quantised output against the reference

    @property
    def mean_low(self) -> float:
        return float(np.mean(self.psnr_low)) if self.names else float("nan")

    @property
    def mean_enhanced(self) -> float:
        return float(np.mean(self.psnr_enhanced)) if self.names else float("nan")

    @property
    def gain(self) -> float:
        return self.mean_enhanced - self.mean_low

    def as_dict(self) -> dict:
        return {"images": [{"name": n, "psnr_low_db": lo, "psnr_enhanced_db": en}
                           for n, lo, en in zip(self.names, self.psnr_low, self.psnr_enhanced)],
                "mean_psnr_low_db": self.mean_low, "mean_psnr_enhanced_db": self.mean_enhanced,
                "gain_db": self.gain}

    def text(self) -> str:
        if not self.names:
            return "held-out: no pairs"
        return (f"held-out PSNR ({len(self.names)} pairs): low-light {self.mean_low:.2f} dB, "
                f"enhanced {self.mean_enhanced:.2f} dB ({self.gain:+.2f} dB)")


def evaluate_heldout(enhance: Callable[[np.ndarray], np.ndarray],
                     pairs: Sequence[ImagePair]) -> HeldoutResult:
    """Enhance every held-out low image and compare input and output with the reference."""
    names, low_db, out_db = [], [], []
    for pair in pairs:
        output = quantize(np.asarray(enhance(to_float(pair.low))))
        names.append(pair.name)
        low_db.append(psnr_uint8(pair.low, pair.high))
        out_db.append(psnr_uint8(output, pair.high))
    return HeldoutResult(names, low_db, out_db)


def evaluate_checkpoint(path, pairs: Sequence[ImagePair] | None = None,
                        backend: str = "jax") -> HeldoutResult:
    """Held-out PSNR of a .pth / .safetensors checkpoint (default: the built-in held-out
    pairs chelsea, coffee, rocket, as darkened in samples/), on any backend of the one
    predictor (frameworks.predictor: jax, torch, torch-compile), each image run as its
    memory plan says."""
    from core.data import builtin_heldout
    from frameworks.predictor import Predictor
    from weights.convert import load_checkpoint

    enhance = Predictor(load_checkpoint(path), backend).predict
    return evaluate_heldout(enhance, builtin_heldout() if pairs is None else pairs)
