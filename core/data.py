"""Training data for both trainers: pair sources, the authors' augmentation, seeded batches.

Framework-neutral (numpy and Pillow). Three kinds of source:

- `SyntheticPairs`: fixed targets (shorter side 384) darkened afresh on every draw with
  the authors' recipe (core/lowlight.py), so a handful of photographs gives endless
  pairs. Only the crop is darkened; the contrast step uses the full image's mean, so
  the crop equals the same crop of the darkened full image. The built-in source is
  scikit-image's bundled photographs (core.lowlight.BUILTIN_TRAIN).
- `FolderPairs`: LOL-layout folders, `low/` and `high/` matched by file name (also the
  `our485` / `eval15` layout); pairs of any size at least one patch large.
- held-out pairs for evaluation (`core.image_pairs.ImagePair`): the built-in held-out
  photographs darkened with seed 0 (the same as samples/), or LOL's `eval15`.

A batch is a pure function of (seed, step): which pairs it holds, every darkening
draw, crop and flip come from generators seeded with (seed, step, position). So the
JAX and PyTorch trainers see the same batches, a resumed run sees the batches an
uninterrupted run would, and samples can be made in parallel threads.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import threading
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from core.images import ImageError, list_images, load_image
from core.image_pairs import ImagePair
from core.recipe import AUTHORS_RECIPE
from core.lowlight import (BUILTIN_HELDOUT, BUILTIN_TRAIN, SHORT_SIDE, UNSEEN_PHOTO,
                           DarkeningDraw, builtin_image, contrast_mean, darken, make_pair,
                           resize_short_side)

HELDOUT_SEED = 0  # the darkening seed of the held-out built-in pairs (and of samples/)
TRAIN_SPLITS = ("our485", "train")
HELDOUT_SPLITS = ("eval15", "test")


class DataError(ImageError):
    """Training data that cannot be used; the message is one line for the user."""


def to_uint8(image01: np.ndarray) -> np.ndarray:
    """float [0, 1] (from load_image) back to the 8-bit values it was read from."""
    return np.clip(np.rint(np.asarray(image01, np.float32) * 255.0), 0, 255).astype(np.uint8)


def to_float(image_uint8: np.ndarray) -> np.ndarray:
    """uint8 -> float32 / 255, exactly what the authors' ToTensor (and load_image) give."""
    return np.asarray(image_uint8, np.uint8).astype(np.float32) / np.float32(255)


# ---- augmentation -------------------------------------------------------------------
def crop_origin(height: int, width: int, patch: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of a random patch x patch crop (uniform over valid positions)."""
    if patch > height or patch > width:
        raise DataError(f"patch {patch} is larger than a {height} x {width} image")
    return int(rng.integers(0, height - patch + 1)), int(rng.integers(0, width - patch + 1))


def augment(low: np.ndarray, high: np.ndarray, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """The authors' augmentation, the same for both images: vertical flip, horizontal
    mirror, rotation by 180 degrees (in that order), each with the recipe's probability
    (core.recipe: 0.5)."""
    p = AUTHORS_RECIPE.flip_probability
    if rng.random() < p:
        low, high = low[::-1], high[::-1]
    if rng.random() < p:
        low, high = low[:, ::-1], high[:, ::-1]
    if rng.random() < p:
        low, high = low[::-1, ::-1], high[::-1, ::-1]
    return np.ascontiguousarray(low), np.ascontiguousarray(high)


# ---- sources --------------------------------------------------------------------------
class PairSource(Protocol):
    names: list[str]
    problems: list[str]

    def __len__(self) -> int: ...

    def crop(self, index: int, patch: int, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]: ...


class SyntheticPairs:
    """Targets darkened afresh at every draw (the authors' pre-training pairs)."""

    def __init__(self, targets: dict[str, np.ndarray], problems: list[str] | None = None):
        if not targets:
            raise DataError("no usable source images")
        self.names = sorted(targets)
        self.targets = [targets[n] for n in self.names]
        self.problems = list(problems or [])

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def builtin(cls, names: tuple[str, ...] = BUILTIN_TRAIN) -> "SyntheticPairs":
        unknown = [n for n in names if n not in BUILTIN_TRAIN]
        if unknown or not names:
            raise DataError(f"unknown built-in training image(s) {', '.join(unknown) or '(none)'}; "
                            f"known: {', '.join(BUILTIN_TRAIN)}")
        return cls({n: resize_short_side(builtin_image(n)) for n in names})

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "SyntheticPairs":
        paths, problems = list_images([folder])
        targets: dict[str, np.ndarray] = {}
        for path in paths:
            if path.stem in targets:
                problems.append(f"{path}: another image is also named {path.stem!r}; skipped")
                continue
            try:
                targets[path.stem] = resize_short_side(to_uint8(load_image(path)))
            except ImageError as err:
                problems.append(str(err) if str(path) in str(err) else f"{path}: {err}")
        if not targets:
            raise DataError(f"{folder}: no readable images")
        return cls(targets, problems)

    def crop(self, index: int, patch: int, rng: np.random.Generator):
        high = self.targets[index]
        draw = DarkeningDraw.sample(rng)
        top, left = crop_origin(high.shape[0], high.shape[1], patch, rng)
        high_crop = np.ascontiguousarray(high[top:top + patch, left:left + patch])
        return darken(high_crop, draw, mean=contrast_mean(high, draw.saturation)), high_crop


class FolderPairs:
    """Fixed (low, high) pairs from a LOL-layout folder, held in memory as uint8."""

    def __init__(self, pairs: dict[str, tuple[np.ndarray, np.ndarray]], problems: list[str]):
        if not pairs:
            raise DataError("no usable image pairs")
        self.names = sorted(pairs)
        self.pairs = [pairs[n] for n in self.names]
        self.problems = problems

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def load(cls, low_dir: Path, high_dir: Path, min_side: int = 0) -> "FolderPairs":
        return cls(*load_pairs(low_dir, high_dir, min_side))

    def crop(self, index: int, patch: int, rng: np.random.Generator):
        low, high = self.pairs[index]
        top, left = crop_origin(low.shape[0], low.shape[1], patch, rng)
        return (np.ascontiguousarray(low[top:top + patch, left:left + patch]),
                np.ascontiguousarray(high[top:top + patch, left:left + patch]))


def match_pair_files(low_dir: Path, high_dir: Path
                     ) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """(name, low, high) for every file name present in both folders; unmatched names
    are problems. Names are matched exactly, then by stem (low/1.jpg with high/1.png)."""
    lows, problems = list_images([low_dir])
    highs, more = list_images([high_dir])
    problems += more
    high_by_name = {p.name: p for p in highs}
    high_by_stem: dict[str, Path] = {}
    for p in highs:
        high_by_stem.setdefault(p.stem, p)
    matched, used = [], set()
    for low in lows:
        high = high_by_name.get(low.name) or high_by_stem.get(low.stem)
        if high is None or high in used:
            problems.append(f"{low}: no matching file in {high_dir}")
            continue
        used.add(high)
        matched.append((low.stem, low, high))
    problems += [f"{p}: no matching file in {low_dir}" for p in highs if p not in used]
    return matched, problems


def load_pairs(low_dir: Path, high_dir: Path, min_side: int = 0
               ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Read matched pairs; a bad file, a size mismatch or a too-small pair is one problem
    line and the pair is skipped."""
    from core.progress import progress

    matched, problems = match_pair_files(low_dir, high_dir)
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, low_path, high_path in progress(matched, desc="reading pairs", unit="pair"):
        try:
            low, high = to_uint8(load_image(low_path)), to_uint8(load_image(high_path))
        except ImageError as err:
            problems.append(str(err))
            continue
        if low.shape != high.shape:
            problems.append(f"{low_path}: size {low.shape[1]}x{low.shape[0]} differs from "
                            f"{high_path.name} ({high.shape[1]}x{high.shape[0]}); skipped")
            continue
        if min(low.shape[:2]) < min_side:
            problems.append(f"{low_path}: {low.shape[1]}x{low.shape[0]} is smaller than the "
                            f"{min_side}-pixel patch; skipped")
            continue
        pairs[name] = (low, high)
    return pairs, problems


def pair_folders(root: Path, splits: tuple[str, ...]) -> tuple[Path, Path] | None:
    """(low, high) of a LOL layout: root/low + root/high, or root/<split>/low + high."""
    for base in (root, *(root / s for s in splits)):
        if (base / "low").is_dir() and (base / "high").is_dir():
            return base / "low", base / "high"
    return None


# ---- held-out pairs -----------------------------------------------------------------
def builtin_heldout(seed: int = HELDOUT_SEED) -> list[ImagePair]:
    """The built-in held-out photographs (chelsea, coffee, rocket) darkened with `seed`."""
    out = []
    for name in BUILTIN_HELDOUT:
        low, high, _ = make_pair(builtin_image(name), name, seed)
        out.append(ImagePair(name, low, high))
    return out


def unseen_pairs(seeds=range(5)) -> list[ImagePair]:
    """core.lowlight.UNSEEN_PHOTO (never trained on, never used to pick a model),
    darkened once per seed: named motorcycle-s<seed>."""
    out = []
    for seed in seeds:
        low, high, _ = make_pair(builtin_image(UNSEEN_PHOTO), UNSEEN_PHOTO, seed)
        out.append(ImagePair(f"{UNSEEN_PHOTO}-s{seed}", low, high))
    return out


def folder_heldout(low_dir: Path, high_dir: Path) -> tuple[list[ImagePair], list[str]]:
    pairs, problems = load_pairs(low_dir, high_dir)
    return [ImagePair(n, lo, hi) for n, (lo, hi) in sorted(pairs.items())], problems


# ---- opening a --data argument ---------------------------------------------------------
@dataclasses.dataclass
class TrainingData:
    source: PairSource
    heldout: list[ImagePair]
    description: str
    problems: list[str]


def open_source(spec: str, patch: int) -> tuple[PairSource, str, list[ImagePair] | None]:
    """(source, description, automatic held-out pairs or None for the built-in ones)."""
    if spec == "builtin" or spec.startswith("builtin:"):
        if patch > SHORT_SIDE:
            raise DataError(f"patch {patch} is larger than the {SHORT_SIDE}-pixel shorter side "
                            "of the built-in targets")
        names = tuple(n.strip() for n in spec[8:].split(",") if n.strip()) or BUILTIN_TRAIN
        source = SyntheticPairs.builtin(names)
        description = f"built-in: {len(source)} scikit-image photographs, darkened on the fly"
        return source, description, None
    root = Path(spec)
    if not root.is_dir():
        raise DataError(f"{spec}: not a folder (give a folder of images, a LOL-layout folder, "
                        "or 'builtin')")
    folders = pair_folders(root, TRAIN_SPLITS)
    if folders is None:
        if patch > SHORT_SIDE:
            raise DataError(f"patch {patch} is larger than the {SHORT_SIDE}-pixel shorter side "
                            "of synthetic targets")
        source = SyntheticPairs.from_folder(root)
        return source, f"{len(source)} images from {root}, darkened on the fly", []
    pairs = FolderPairs.load(*folders, min_side=patch)
    eval_folders = pair_folders(root, HELDOUT_SPLITS)
    heldout: list[ImagePair] = []
    if eval_folders is not None and eval_folders != folders:
        heldout, more = folder_heldout(*eval_folders)
        pairs.problems += more
    return pairs, f"{len(pairs)} pairs from {folders[0].parent}", heldout


def open_training_data(spec: str, patch: int, heldout: str = "auto") -> TrainingData:
    """`builtin` (or `builtin:NAME,NAME` for some of the built-in training photographs),
    a LOL-layout folder, or a folder of images to darken synthetically.

    heldout: "auto" (the built-in held-out pairs for builtin, eval15 for a LOL root that
    has it, none otherwise), "builtin", "none", or a LOL-layout folder.
    """
    source, description, auto = open_source(spec, patch)
    problems = list(source.problems)
    if heldout == "none":
        pairs: list[ImagePair] = []
    elif heldout == "builtin" or (heldout == "auto" and auto is None):
        pairs = builtin_heldout()
    elif heldout == "auto":
        pairs = auto or []
    else:
        folders = pair_folders(Path(heldout), HELDOUT_SPLITS)
        if folders is None:
            raise DataError(f"{heldout}: a held-out folder needs low/ and high/ subfolders")
        pairs, more = folder_heldout(*folders)
        problems += more
    return TrainingData(source, pairs, description, problems)


# ---- seeded batches --------------------------------------------------------------------
def auto_processes() -> int:
    """Worker processes for batches when not asked: none on small machines (a
    background thread does), else half the cores, at most 8."""
    cpus = os.cpu_count() or 1
    return 0 if cpus < 4 else min(8, cpus // 2)


class BatchStream:
    """Batches as a pure function of (seed, step).

    An epoch is max(1, n // batch) steps (the authors' DataLoader with drop_last=True,
    but at least one step when there are fewer pairs than a batch). Epoch e visits the
    pairs in the order of seeded permutations, repeated when n < batch.

    `iterate` makes batches ahead of the trainer: in `processes` worker processes
    (spawned, each holding a copy of the source; Pillow and numpy hold the GIL too much
    for threads to scale) or, with processes=0, in one background thread that spreads
    a batch's samples over `threads` threads.
    """

    def __init__(self, source: PairSource, batch: int, patch: int, seed: int,
                 threads: int = 0, processes: int = 0):
        if batch < 1 or patch < 1:
            raise DataError(f"batch and patch must be positive, got {batch} and {patch}")
        self.source, self.batch, self.patch, self.seed = source, batch, patch, int(seed)
        self.threads = threads if threads > 0 else min(4, os.cpu_count() or 1)
        self.processes = max(0, int(processes))
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._order_cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.source) // self.batch)

    def epoch_order(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._order_cache:
                n = len(self.source)
                repeats = math.ceil(max(n, self.batch) / n)
                order = np.concatenate(
                    [np.random.default_rng([self.seed, 0, epoch, r]).permutation(n)
                     for r in range(repeats)])
                self._order_cache = {epoch: order}
            return self._order_cache[epoch]

    def indices(self, step: int) -> np.ndarray:
        epoch, k = divmod(int(step), self.steps_per_epoch)
        return self.epoch_order(epoch)[k * self.batch:(k + 1) * self.batch]

    def sample(self, step: int, position: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (low, high) patch `position` of batch `step`."""
        rng = np.random.default_rng([self.seed, 1, int(step), int(position)])
        index = int(self.indices(step)[position])
        low, high = self.source.crop(index, self.patch, rng)
        return augment(low, high, rng)

    def batch_uint8_at(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 NHWC (low, high) for one step."""
        jobs = range(self.batch)
        if self.threads > 1 and self.batch > 1:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.threads)
            pairs = list(self._pool.map(lambda j: self.sample(step, j), jobs))
        else:
            pairs = [self.sample(step, j) for j in jobs]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def batch_at(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """float32 NHWC (low, high) in [0, 1] for one step."""
        low, high = self.batch_uint8_at(step)
        return to_float(low), to_float(high)

    def iterate(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(step, low, high) float32 for start <= step < stop, made ahead of use."""
        if start >= stop:
            return
        if self.processes > 0:
            yield from self._iterate_processes(start, stop)
            return
        with concurrent.futures.ThreadPoolExecutor(1) as ahead:
            pending = ahead.submit(self.batch_at, start)
            for step in range(start, stop):
                low, high = pending.result()
                if step + 1 < stop:
                    pending = ahead.submit(self.batch_at, step + 1)
                yield step, low, high

    def _iterate_processes(self, start: int, stop: int):
        import collections
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # never fork a multithreaded framework
        with concurrent.futures.ProcessPoolExecutor(
                self.processes, mp_context=context, initializer=_start_worker,
                initargs=(self.source, self.batch, self.patch, self.seed)) as pool:
            queued: collections.deque = collections.deque()
            upcoming = start
            while upcoming < stop and len(queued) < 2 * self.processes:
                queued.append((upcoming, pool.submit(_worker_batch, upcoming)))
                upcoming += 1
            while queued:
                step, future = queued.popleft()
                low, high = future.result()
                if upcoming < stop:
                    queued.append((upcoming, pool.submit(_worker_batch, upcoming)))
                    upcoming += 1
                yield step, to_float(low), to_float(high)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


_WORKER_STREAM: BatchStream | None = None


def _start_worker(source: PairSource, batch: int, patch: int, seed: int) -> None:
    global _WORKER_STREAM
    _WORKER_STREAM = BatchStream(source, batch, patch, seed, threads=1)


def _worker_batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    assert _WORKER_STREAM is not None
    return _WORKER_STREAM.batch_uint8_at(step)
