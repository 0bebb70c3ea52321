"""Synthetic low-light pairs with the authors' pre-training recipe.

Framework-neutral (numpy and Pillow). The target is the image resized so that its
shorter side is 384; the input is that image with colour saturation and contrast
dimmed by factors in U(0.7, 1.0), then `beta * (alpha * v) ** gamma` with
beta ~ U(0.5, 1), alpha ~ U(0.9, 1), gamma ~ U(1.5, 5), on v = pixel / 255.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

SHORT_SIDE = 384
# scikit-image's bundled photographs (no download needed), split once and for all.
BUILTIN_TRAIN = ("astronaut", "hubble_deep_field", "immunohistochemistry", "retina",
                 "colorwheel", "camera", "coins", "moon", "brick", "grass", "gravel",
                 "clock", "cell", "page", "text")
BUILTIN_HELDOUT = ("chelsea", "coffee", "rocket")
# A bundled photograph that nothing here trains or selects on: the left view of
# scikit-image's stereo_motorcycle (500x741), darkened with several seeds.
UNSEEN_PHOTO = "motorcycle"


@dataclasses.dataclass(frozen=True)
class DarkeningDraw:
    saturation: float
    contrast: float
    beta: float
    alpha: float
    gamma: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "DarkeningDraw":
        return cls(saturation=float(rng.uniform(0.7, 1.0)), contrast=float(rng.uniform(0.7, 1.0)),
                   beta=float(rng.uniform(0.5, 1.0)), alpha=float(rng.uniform(0.9, 1.0)),
                   gamma=float(rng.uniform(1.5, 5.0)))


def builtin_image(name: str) -> np.ndarray:
    """One of scikit-image's bundled images as uint8 RGB."""
    import skimage.data

    if name == UNSEEN_PHOTO:
        return np.ascontiguousarray(skimage.data.stereo_motorcycle()[0][:, :, :3])
    if name not in BUILTIN_TRAIN + BUILTIN_HELDOUT:
        raise KeyError(f"{name!r} is not a built-in image")
    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3]).astype(np.uint8)


# Darkening takes ~95 bytes per pixel (float64 channels and their temporaries): 4 MP is
# ~380 MiB, a 384 x 10,416 panorama; longer and thinner images are refused.
MAX_RESIZED_PIXELS = 4_000_000


def resize_short_side(image: np.ndarray, short_side: int = SHORT_SIDE) -> np.ndarray:
    """Resize (antialiased bicubic) so that the shorter side is `short_side`. An image so
    long and thin that the result would pass MAX_RESIZED_PIXELS is an ImageError (a
    1 x 3000 strip would become 384 x 1,152,000 and take ~40 GB to darken)."""
    from PIL import Image

    from core.images import ImageError

    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size[0] * size[1] > MAX_RESIZED_PIXELS:
        raise ImageError(f"{w}x{h} (WxH) resized to a shorter side of {short_side} would be "
                         f"{size[0]}x{size[1]}, more than {MAX_RESIZED_PIXELS / 1e6:.0f} MP "
                         "(sides more than 27:1 apart); not used")
    if size == (w, h):
        return image.copy()
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC,
                                                    reducing_gap=None))


def contrast_mean(image: np.ndarray, saturation: float) -> int:
    """The grey level PIL's Contrast step blends towards: the rounded mean luma of the
    colour-dimmed image. A crop of `image` darkened with this mean equals the same
    crop of the darkened full image (every other step works pixel by pixel)."""
    from PIL import Image, ImageEnhance, ImageStat

    dimmed = ImageEnhance.Color(Image.fromarray(image)).enhance(saturation)
    return int(ImageStat.Stat(dimmed.convert("L")).mean[0] + 0.5)


def darken(image: np.ndarray, draw: DarkeningDraw, mean: int | None = None) -> np.ndarray:
    """The low-light input for a uint8 RGB target.

    `mean` (from `contrast_mean` of the full image) lets a crop be darkened exactly as
    the full image would be; without it the contrast step uses this image's own mean.
    """
    from PIL import Image, ImageEnhance

    pil = Image.fromarray(image)
    pil = ImageEnhance.Color(pil).enhance(draw.saturation)
    if mean is None:
        pil = ImageEnhance.Contrast(pil).enhance(draw.contrast)
    else:
        grey = Image.new("L", pil.size, int(mean)).convert(pil.mode)
        pil = Image.blend(grey, pil, draw.contrast)
    v = np.asarray(pil, dtype=np.float64) / 255.0
    low = draw.beta * (draw.alpha * v) ** draw.gamma
    return np.clip(low * 255.0, 0, 255).astype(np.uint8)


def name_seed(seed: int, name: str) -> int:
    """A per-image seed that does not depend on the order images are processed in. A
    name's bytes as the file system holds them (a name that is not UTF-8 reaches
    Python with its bytes escaped as surrogates; surrogateescape gives them back)."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8", "surrogateescape"))) \
        % (2**32)


def make_pair(image: np.ndarray, name: str, seed: int) -> tuple[np.ndarray, np.ndarray, DarkeningDraw]:
    """(low, high, draw) for one source image, reproducible from (seed, name)."""
    high = resize_short_side(image)
    draw = DarkeningDraw.sample(np.random.default_rng(name_seed(seed, name)))
    return darken(high, draw), high, draw
