"""Exact tiled inference, framework-neutral: the stage loop, tiles, buckets, map storage.

A network that is local except for a few global means over height and width (DLN:
each LBP's feature aggregation averages its input) runs stage by stage: a stage
reads the input image and/or the maps of the stages before it, and, when it needs
one, the mean of those maps over the whole image; it writes new map channels, or the
output. Each stage runs tile by tile once the stages before it are complete. The
network declares its stages as a table of `Stage` rows (DLN's is weights.stages,
read off its tensor table); this module owns the loop, the zero-padded reads and
the storage of the maps.

A tile reads its core region plus the stage's halo (the receptive radius of its
chain of convolutions); everything outside the image is zero and every
convolution's output is multiplied by the validity mask, which is exactly the zero
padding the whole-image network applies before each convolution. The means are
accumulated over the valid pixels of the complete maps. Every tile of a stage
therefore has one fixed shape (one compilation) and the result equals the
whole-image forward to float32 rounding.

The maps stay in memory when they fit the budget, else in a nameless scratch file,
reserved whole before the first tile, in blocks of channels moved with pread / pwrite
(MapStore), so its pages never accumulate in the process's resident set.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
from typing import Protocol

import numpy as np

from core.errors import InputError
from core.units import format_bytes

DEFAULT_TILE = 512          # core size of a tile; halos add twice the largest halo
MIN_TILE = 16

# Bucket sides for whole-image runs: 2^k x {1, 1.25, 1.5, 1.75} from 32 up
# (32, 40, 48, 56, 64, 80, ..., 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, ...).
# Each side is padded up to the next bucket side: at most 25 % more per side (from
# just above 2^k to 1.25 x 2^k), about 6 % on average for sides spread evenly, and
# none at all for sides already on the ladder (320, 384, 480 -> 512, 600 -> 640, ...).
BUCKET_STEPS = (1.0, 1.25, 1.5, 1.75)
BUCKET_MIN_SIDE = 32


def bucket_side(n: int) -> int:
    """The smallest ladder value >= n (see BUCKET_STEPS)."""
    n = int(n)
    if n <= BUCKET_MIN_SIDE:
        return BUCKET_MIN_SIDE
    power = 2 ** int(math.floor(math.log2(n)))
    for step in BUCKET_STEPS + (2.0,):
        side = int(power * step)
        if side >= n:
            return side
    return 2 * power  # not reached


def bucket_shape(height: int, width: int) -> tuple[int, int]:
    return bucket_side(height), bucket_side(width)


def padding_overhead(height: int, width: int) -> float:
    """Padded pixels over valid pixels, minus one (0.0 = no padding)."""
    bh, bw = bucket_shape(height, width)
    return bh * bw / (height * width) - 1.0


def landscape(height: int, width: int) -> tuple[int, int]:
    """The shape with the shorter side first (a portrait image runs transposed)."""
    return (width, height) if height > width else (height, width)


def covers(bucket: tuple[int, int], shape: tuple[int, int]) -> bool:
    return bucket[0] >= shape[0] and bucket[1] >= shape[1]


def smallest_cover(buckets, shape: tuple[int, int]) -> tuple[int, int] | None:
    fitting = [b for b in buckets if covers(b, shape)]
    return min(fitting, key=lambda b: (b[0] * b[1], b)) if fitting else None


# The greedy plan tries every pair of buckets at every merger, so its time grows about
# as the fourth power of the number of distinct own buckets: measured one image per
# bucket, 16 / 32 / 48 / 64 buckets took 0.02 / 0.44 / 2.5 / 8.6 s (2-core AMD EPYC),
# 152 took 284 s. Above this many the folder is not planned.
PLAN_MAX_BUCKETS = 48


def plan_buckets(shapes: list[tuple[int, int]], compile_pixels: float,
                 compiled: set | frozenset = frozenset(),
                 max_pixels: int | None = None) -> list[tuple[int, int]]:
    """The bucket shapes a folder of whole images runs in, chosen for the whole folder.

    shapes: each image's (height, width), already landscape. The images are grouped by
    their own ladder bucket (bucket_shape), and each group starts in the smallest shape
    that holds all its images (a folder of 600 x 400 photos runs unpadded, not in the
    640 x 448 bucket); then, greedily, the two buckets whose merger into one (the larger
    height, the larger width) saves the most are merged, while that saves anything.
    The cost of a plan is the padded pixels computed plus
    `compile_pixels` for every bucket shape not in `compiled` (a compilation costs as
    much time as computing that many pixels); a merged bucket above max_pixels is
    never formed. Each image then runs in the smallest planned bucket that covers it.
    A folder with more than PLAN_MAX_BUCKETS own buckets keeps them all, unmerged.
    """
    if not shapes:
        return []
    # The plan works on groups (one per own ladder bucket: a few dozen at most, however
    # many images the folder has): each group's image count and tight shape.
    counts: dict[tuple[int, int], int] = {}
    tight: dict[tuple[int, int], tuple[int, int]] = {}
    for shape in shapes:
        own = bucket_shape(*shape)
        counts[own] = counts.get(own, 0) + 1
        held = tight.get(own, (0, 0))
        tight[own] = (max(held[0], int(shape[0])), max(held[1], int(shape[1])))

    def plan_cost(buckets) -> tuple[float, list[tuple[int, int]]]:
        """(cost, the buckets some group runs in): a bucket no group picks is dropped,
        so it can neither cost a compilation nor catch images a later merger frees."""
        used: dict[tuple[int, int], int] = {}
        for own, count in counts.items():
            b = smallest_cover(buckets, tight[own])
            used[b] = used.get(b, 0) + count * b[0] * b[1]
        value = sum(used.values()) + sum(compile_pixels for b in used if b not in compiled)
        return value, sorted(used)

    buckets = sorted(set(tight.values()))
    if len(buckets) > PLAN_MAX_BUCKETS:
        return sorted(counts)  # too many to plan in time: each image in its ladder bucket
    best, buckets = plan_cost(buckets)
    while len(buckets) > 1:
        trial = None
        for i, a in enumerate(buckets):
            for b in buckets[i + 1:]:
                merged = (max(a[0], b[0]), max(a[1], b[1]))
                if max_pixels is not None and merged[0] * merged[1] > max_pixels:
                    continue
                value, used = plan_cost(sorted(set(buckets) - {a, b} | {merged}))
                if value < best and (trial is None or value < trial[0]):
                    trial = (value, used)
        if trial is None:
            break
        best, buckets = trial
    return buckets


@dataclasses.dataclass(frozen=True)
class Stage:
    """One row of a network's stage table."""

    name: str
    halo: int      # pixels of context each side: the receptive radius of the stage
    reads: int     # leading channels of the stage maps it reads (0: none)
    image: bool    # it reads the input image too
    mean: bool     # it takes the mean, over the whole image, of the maps it reads
    writes: int    # channels it appends to the stage maps; 0: its result is the output
    # The pieces of the network the stage runs one after the other, each (name, halo),
    # the halos adding up to the stage's: a piece that needs no mean runs in the stage
    # before it, on that stage's tile, instead of re-reading every map it needs (DLN's
    # final convolutions run after its third LBP: 192 channels read once, not 256
    # again). () is the one piece (name, halo). Each piece reads the maps and what the
    # pieces before it computed; the stage's result is the last piece's.
    parts: tuple[tuple[str, int], ...] = ()

    def __post_init__(self):
        if self.parts and sum(halo for _, halo in self.parts) != self.halo:
            raise ValueError(f"stage {self.name}: its parts' halos do not add up to "
                             f"{self.halo}")

    @property
    def steps(self) -> tuple[tuple[str, int], ...]:
        """(name, halo) of each piece it runs, in order."""
        return self.parts or ((self.name, self.halo),)


def crop(array, halo: int, axis: int = 1):
    """The array without `halo` pixels on each side of its two spatial axes, `axis` and
    the one after it: 1 for (N, H, W, C) arrays, 2 for NCHW tensors (None stays None)."""
    if array is None or halo == 0:
        return array
    index = (slice(None),) * axis + (slice(halo, array.shape[axis] - halo),
                                     slice(halo, array.shape[axis + 1] - halo))
    return array[index]


class StageRunner(Protocol):
    """One framework's fixed-shape stage functions (NHWC numpy in and out, batch 1)."""

    stages: tuple[Stage, ...]

    def start_stage(self, index: int, maps: np.ndarray | None, image: np.ndarray | None,
                    mean: np.ndarray | None, mask: np.ndarray):
        """Start stage `index` on one tile: its inputs (core + 2 x halo on each axis, zero
        outside the image; `maps`: the stage maps it reads as a list of channel blocks,
        each (h, w, c_i), which concatenated along the channels are its input maps) and
        the validity mask of that extent. Returns a handle whose result() is the tile's
        core; a backend that computes asynchronously returns at once, so that the loop
        reads the next tile meanwhile. The map blocks are the loop's buffers: they are
        filled again for the tile after next, once this tile's result() has returned."""
        ...


def map_channels(stages) -> int:
    return sum(stage.writes for stage in stages)


def largest_halo(stages) -> int:
    return max(stage.halo for stage in stages)


def map_bytes(height: int, width: int, channels: int) -> int:
    """Storage of `channels` float32 stage maps of one image."""
    return int(height) * int(width) * int(channels) * 4


class MapStore:
    """The (H, W, channels) float32 stage maps, in blocks of channels (each block an
    (H, W, block) array): in memory, or in a scratch file.

    The scratch file is created without a name (O_TMPFILE, or unlinked as soon as it is
    opened), so no kill, not even SIGKILL, can leave it behind, and its whole size is
    reserved up front with posix_fallocate: a disk or tmpfs without room for it is one
    line before any tile runs, never a SIGBUS in the middle of the run.

    On disk the channels are stored in blocks of `block` (each block an (H, W, block)
    array after the previous one: DLN's stages each write one block of dim channels),
    and tiles move with pread / pwrite, one call per row and block, through the page
    cache: a tile's write replaces whole runs of a block's rows (no page is read back to
    be modified), and nothing is mapped into the process, so its resident set never holds
    the file's pages. (Memory-mapping whole rows of all channels instead spent 108 s of
    a 207 s 12-megapixel run in page faults on the 2-core AMD EPYC.)"""

    def __init__(self, height: int, width: int, channels: int, in_memory: bool,
                 scratch_dir: str | None = None, block: int | None = None):
        self.shape = (height, width, channels)
        self.block = int(block or channels)
        if channels % self.block:
            raise ValueError(f"block {self.block} does not divide {channels} channels")
        self._array = None
        self._file = None
        if in_memory:   # block-major, as on disk: a list of (H, W, block) arrays
            self._array = [np.zeros((height, width, self.block), np.float32)
                           for _ in range(channels // self.block)]
            return
        need = int(height) * int(width) * int(channels) * 4
        where = scratch_dir or tempfile.gettempdir()
        try:
            self._file = tempfile.TemporaryFile(prefix="dln-tiles-", dir=where)
        except OSError as err:
            raise InputError(f"tiled inference cannot create its scratch file in {where} "
                             f"({err.strerror or err}; set TMPDIR to a writable folder)") \
                from None
        try:
            os.posix_fallocate(self._file.fileno(), 0, need)
        except OSError as err:
            self.close()
            try:
                free = f", which has {format_bytes(shutil.disk_usage(where).free)} free"
            except OSError:
                free = ""
            raise InputError(f"tiled inference needs {format_bytes(need)} of scratch space in "
                             f"{where}{free} ({err.strerror or err}; set TMPDIR to a "
                             "roomier folder)") from None

    @property
    def on_disk(self) -> bool:
        return self._array is None

    def _offset(self, index: int, y: int, x: int) -> int:
        height, width, _ = self.shape
        return ((index * height + y) * width + x) * self.block * 4

    def _rows(self, index: int, a0: int, a1: int, b0: int, b1: int,
              rows: np.ndarray | None = None) -> np.ndarray:
        """Block `index`, rows a0..a1, columns b0..b1: read into `rows` (or a new array;
        each of its rows contiguous)."""
        rows = np.empty((a1 - a0, b1 - b0, self.block), np.float32) if rows is None else rows
        fd = self._file.fileno()
        for r in range(a1 - a0):
            _transfer(os.preadv, fd, rows[r], self._offset(index, a0 + r, b0))
        return rows

    def read_blocks(self, y0: int, x0: int, size_y: int, size_x: int, channels: int,
                    into: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """Channels [0, channels) of the region starting at (y0, x0), zero outside, as the
        list of its channel blocks, each (size_y, size_x, block) (the last one cut to the
        channels asked for): concatenated along the channels, they are the region.

        Each block is read straight into its place (no copy into an array of all the
        channels: at 534 x 534 x 192 that copy cost ~40 ms a tile). `into`: the list
        this returned for an earlier region, filled again when its arrays have the shapes
        needed (no fresh pages to fault in: ~30 ms a tile); the caller must no longer
        need what it held."""
        height, width, _ = self.shape
        a0, a1 = max(y0, 0), min(y0 + size_y, height)
        b0, b1 = max(x0, 0), min(x0 + size_x, width)
        inside = (a0, a1, b0, b1) == (y0, y0 + size_y, x0, x0 + size_x)
        count = -(-channels // self.block)
        shape = (size_y, size_x, self.block)
        blocks = []
        for index in range(count):
            block = into[index] if into is not None and index < len(into) else None
            if block is not None and block.base is not None:   # a cut last block
                block = block.base
            if block is None or block.shape != shape or block.dtype != np.float32:
                block = np.empty(shape, np.float32)
            blocks.append(block)
            if not inside:   # only what lies outside must be zero: tiles at the edge
                block.fill(0)
            if a1 <= a0 or b1 <= b0:
                continue
            region = block[a0 - y0:a1 - y0, b0 - x0:b1 - x0]
            if self._array is not None:
                region[...] = self._array[index][a0:a1, b0:b1]
            else:
                self._rows(index, a0, a1, b0, b1, region)
        last = channels - (count - 1) * self.block
        if count and last < self.block:
            blocks[-1] = blocks[-1][:, :, :last]
        return blocks

    def read(self, y0: int, x0: int, size_y: int, size_x: int, channels: int) -> np.ndarray:
        """Channels [0, channels) of the region starting at (y0, x0), zero outside, as
        one (size_y, size_x, channels) array."""
        blocks = self.read_blocks(y0, x0, size_y, size_x, channels)
        if not blocks:
            return np.zeros((size_y, size_x, 0), np.float32)
        return np.concatenate(blocks, axis=-1)

    def write(self, y0: int, x0: int, channel0: int, values: np.ndarray) -> None:
        """values (h, w, c) at (y0, x0), channels from channel0; clipped to the image."""
        height, width, _ = self.shape
        h = min(values.shape[0], height - y0)
        w = min(values.shape[1], width - x0)
        c1 = channel0 + values.shape[2]
        fd = None if self._array is not None else self._file.fileno()
        for index in range(channel0 // self.block, -(-c1 // self.block)):
            b0, b1 = index * self.block, (index + 1) * self.block
            lo, hi = max(b0, channel0), min(b1, c1)
            if self._array is not None:
                self._array[index][y0:y0 + h, x0:x0 + w, lo - b0:hi - b0] = \
                    values[:h, :w, lo - channel0:hi - channel0]
                continue
            if channel0 <= b0 and b1 <= c1:   # the whole block: written as it is
                rows = np.ascontiguousarray(values[:h, :w, b0 - channel0:b1 - channel0])
            else:                             # part of it: read, modify, write back
                rows = self._rows(index, y0, y0 + h, x0, x0 + w)
                rows[:, :, lo - b0:hi - b0] = values[:h, :w, lo - channel0:hi - channel0]
            for r in range(h):
                _transfer(os.pwritev, fd, rows[r], self._offset(index, y0 + r, x0))

    def close(self) -> None:
        self._array = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _transfer(call, fd: int, row: np.ndarray, offset: int) -> None:
    """All of `row`'s bytes through os.preadv / os.pwritev at `offset` (short transfers
    continued; a read past the end of the reserved file is an error)."""
    view = memoryview(row).cast("B")
    done = 0
    while done < len(view):
        moved = call(fd, [view[done:]], offset + done)
        if moved <= 0:
            raise OSError(f"scratch file: {call.__name__} moved no bytes at {offset + done}")
        done += moved


def padded_region(image: np.ndarray, y0: int, x0: int, size_y: int, size_x: int) -> np.ndarray:
    """image[y0:y0+size_y, x0:x0+size_x] with zeros where it leaves the image."""
    out = np.zeros((size_y, size_x) + image.shape[2:], np.float32)
    a0, a1 = max(y0, 0), min(y0 + size_y, image.shape[0])
    b0, b1 = max(x0, 0), min(x0 + size_x, image.shape[1])
    if a1 > a0 and b1 > b0:
        out[a0 - y0:a1 - y0, b0 - x0:b1 - x0] = image[a0:a1, b0:b1]
    return out


def validity_mask(height: int, width: int, y0: int, x0: int, size_y: int,
                  size_x: int) -> np.ndarray:
    """(size_y, size_x, 1) float32: 1 where the region lies inside the image."""
    ys = np.arange(y0, y0 + size_y)
    xs = np.arange(x0, x0 + size_x)
    inside = ((ys >= 0) & (ys < height))[:, None] & ((xs >= 0) & (xs < width))[None, :]
    return inside.astype(np.float32)[:, :, None]


def tile_origins(height: int, width: int, tile: int) -> list[tuple[int, int]]:
    return [(y, x) for y in range(0, height, tile) for x in range(0, width, tile)]


def tile_count(height: int, width: int, tile: int) -> int:
    return math.ceil(height / tile) * math.ceil(width / tile)


@dataclasses.dataclass
class TiledPlan:
    tile: int
    maps_in_memory: bool
    scratch_dir: str | None = None


def run_tiled(runner: StageRunner, image: np.ndarray, plan: TiledPlan,
              on_tile=None, timeline=None) -> np.ndarray:
    """The network's float32 (H, W, C) output for one (H, W, C) image, stage by stage
    in the order of runner.stages.

    Within a stage, the next tile's inputs are read, and the previous tile's result
    written, while the current tile computes (when the runner computes asynchronously).
    on_tile(): called after every tile of every stage (len(stages) x tile_count calls),
    for a progress bar; timeline: a core.timeline.Timeline for tile_read / tile_wait /
    tile_write spans."""
    from core.timeline import Timeline

    timeline = timeline or Timeline.off()
    height, width = image.shape[:2]
    stages, tile = runner.stages, plan.tile
    image = np.asarray(image, np.float32)
    origins = tile_origins(height, width, tile)
    output = None
    channels = map_channels(stages)
    sums = np.zeros(channels, np.float64)   # per-channel sums of the maps over valid pixels
    tick = on_tile or (lambda: None)
    # one block per stage when every stage writes the same number of channels (DLN: dim)
    writes = {s.writes for s in stages if s.writes}
    block = min(writes) if len(writes) == 1 and channels % min(writes) == 0 else channels
    with MapStore(height, width, channels, plan.maps_in_memory, plan.scratch_dir,
                  block) as maps:
        written = 0

        def finish(stage, y, x, handle):
            nonlocal output
            with timeline.span("tile_wait", stage=stage.name):
                core = handle.result()
            with timeline.span("tile_write", stage=stage.name):
                h, w = min(tile, height - y), min(tile, width - x)
                if stage.writes:
                    sums[written:written + stage.writes] += \
                        core[:h, :w].sum(axis=(0, 1), dtype=np.float64)
                    maps.write(y, x, written, core)
                else:
                    if output is None:
                        output = np.empty((height, width, core.shape[-1]), np.float32)
                    output[y:y + h, x:x + w] = core[:h, :w]
            tick()

        # the maps read for a tile go into one of two sets of buffers, by turns: when a
        # tile's are read, the tile two before it (the last one to use that set) has
        # finished, and its inputs are no longer needed
        buffers = [None, None]
        for index, stage in enumerate(stages):
            mean = ((sums[:stage.reads] / (height * width)).astype(np.float32)
                    if stage.mean else None)
            size = tile + 2 * stage.halo
            pending = None
            for number, (y, x) in enumerate(origins):
                y0, x0 = y - stage.halo, x - stage.halo
                with timeline.span("tile_read", stage=stage.name):
                    if stage.reads:
                        buffers[number % 2] = maps.read_blocks(
                            y0, x0, size, size, stage.reads, into=buffers[number % 2])
                    inputs = (buffers[number % 2] if stage.reads else None,
                              padded_region(image, y0, x0, size, size) if stage.image
                              else None, mean,
                              validity_mask(height, width, y0, x0, size, size))
                handle = runner.start_stage(index, *inputs)
                del inputs
                if pending is not None:
                    finish(stage, *pending)
                pending = (y, x, handle)
            finish(stage, *pending)
            written += stage.writes
    return output


def bucket_batch(images: list[np.ndarray], bucket: tuple[int, int] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Images zero-padded to one bucket shape (N, Hb, Wb, 3) with their validity masks
    (N, Hb, Wb, 1); the bucket is the first image's ladder bucket unless given."""
    bh, bw = bucket or bucket_shape(*images[0].shape[:2])
    x = np.zeros((len(images), bh, bw, 3), np.float32)
    mask = np.zeros((len(images), bh, bw, 1), np.float32)
    for i, image in enumerate(images):
        if (bucket is None and bucket_shape(*image.shape[:2]) != (bh, bw)) or \
                not covers((bh, bw), image.shape[:2]):
            raise ValueError("images of one batch must share a bucket")
        h, w = image.shape[:2]
        x[i, :h, :w] = image
        mask[i, :h, :w] = 1.0
    return x, mask


def check_tile(tile: int) -> int:
    if tile < MIN_TILE:
        raise InputError(f"--tile must be at least {MIN_TILE} pixels, got {tile}")
    return int(tile)
