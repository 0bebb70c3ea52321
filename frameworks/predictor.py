"""The one predictor: the code that runs DLN on images, on any backend.

Backends: "jax" (the Flax Linen port), "nnx" (the Flax NNX port: the same runner,
plans, buckets and tiles, with the NNX model's code inside the traces,
port.nnx_tiled), "torch" and "torch-compile" (the PyTorch reference). Below, "JAX"
means either Flax port.

`dln enhance`, held-out evaluation (dln.heldout), Table 2 (parity.evaluation.table2)
and the benchmark (parity.bench) all run the network through a `Predictor`:
- `plan(height, width)`: how an image runs within the memory budget
  (frameworks.memory_plan: whole in JAX's size bucket, whole at its own size, tiled);
- `plan_folder(sizes)`: JAX's bucket shapes for a folder's whole images, merged while
  the padding costs less than the compilations saved (core.tiling.plan_buckets;
  shapes the compilation cache holds count as free);
- `submit(images, key)` / `Pending.result()`: whole images of one `group_key`, JAX
  dispatching without waiting so that the caller can decode and encode meanwhile;
  `run_tiled(image, plan)`: one image stage by stage (core.tiling.run_tiled);
- `predict(image)`: one image, planned and run (what held-out evaluation and
  Table 2's metrics use);
- `prepare(x)` / `step()`: one forward pass of a prepared batch at its exact shape,
  for timing (Table 2, `dln bench`).
Every path equals the plain whole-image forward to float32 rounding. Each backend gets
its documented fastest CPU settings: JAX with 1x1 convolutions as matrix products
(port.pointwise), PyTorch in eval mode under inference_mode, channels_last by default
(torch-compile: Inductor with freezing for whole images; tiles run eager).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.memory import working_budget
from core.progress import progress
from core.timeline import Timeline
from core.tiling import (TiledPlan, bucket_shape, landscape, plan_buckets, run_tiled,
                         smallest_cover, tile_count)
from frameworks.memory_plan import ImagePlan, bytes_per_pixel, estimated_bytes, plan_image

BACKENDS = ("jax", "nnx", "torch", "torch-compile")
JAX_BACKENDS = ("jax", "nnx")   # Flax Linen and Flax NNX: one runner, one memory plan

# A new bucket shape costs JAX one compilation of the whole-image program (per lane it
# runs in). Measured with `dln enhance` on the benchmark's folder on the 2-core AMD EPYC,
# split into two lanes: the cold run took 4.3 s longer than the warm one for 8
# compilations, ~0.53 s each, while the lanes computed ~8.75 s per megapixel of padded
# buckets (a compilation is main-thread work beside the two busy lanes): one compilation
# is worth ~60,000 pixels; a warm run still traces each program (~0.15 s, ~17,000
# pixels); 50,000 sits between the two, nearer the first run's. The folder planner
# (core.tiling.plan_buckets) merges buckets while the padding a merger adds costs less
# than the compilations it saves. (Unsplit, with XLA's threads on both cores: ~0.8 s
# per compilation against ~7.4 s per megapixel, ~110,000 pixels.)
COMPILE_PIXELS = 50_000


class BackendUnavailable(RuntimeError):
    """A backend that cannot run here (e.g. torch.compile without a working compiler)."""


class Done:
    """An already computed batch (PyTorch runs synchronously)."""

    started, pixels, finished = 0.0, 0, None   # as port.tiled.Pending (nothing to predict)

    def __init__(self, outputs: list[np.ndarray]):
        self._outputs = outputs

    def computed(self) -> bool:
        return True

    def wait(self) -> None:
        pass

    def result(self) -> list[np.ndarray]:
        return self._outputs


class Predictor:
    """A checkpoint's network on one backend, ready to run images."""

    def __init__(self, ckpt, backend: str = "jax", *, tile: str | int = "auto",
                 use_cache: bool = False, cache_dir: str | os.PathLike | None = None,
                 channels_last: bool = True, jax_fast: bool = True,
                 timeline: Timeline | None = None):
        if backend not in BACKENDS:
            raise InputError(f"unknown backend {backend!r} (choose from "
                             f"{', '.join(BACKENDS)})")
        self.backend = backend
        self.config = ckpt.config
        self.tile = tile
        self.lanes: list = []   # the devices a batch may compute on alone (dln.compute_lanes)
        self.timeline = timeline or Timeline.off()
        self.warnings: list[str] = []
        self._buckets: list[tuple[int, int]] = []
        self._index = None
        self._prepared = None
        if backend in JAX_BACKENDS:
            self._init_jax(ckpt, use_cache, cache_dir, jax_fast)
        else:
            self._init_torch(ckpt, channels_last)

    def _init_jax(self, ckpt, use_cache, cache_dir, jax_fast) -> None:
        with self.timeline.span("imports"):
            import jax

            from port.compile_cache import (BucketIndex, compilation_cache_dir,
                                            enable_compilation_cache)
            from port.tiled import JaxStages, JaxWholeImage
            if self.backend == "nnx":  # the NNX model's code in the same runner
                from port.nnx_tiled import NnxStages as stages_class
            else:
                stages_class = JaxStages

        if use_cache:
            folder = Path(cache_dir or compilation_cache_dir())
            problem = enable_compilation_cache(folder)
            if problem:
                self.warnings.append(problem)
            else:
                self._index = BucketIndex(folder, self.config, self.backend)
        with self.timeline.span("load_weights"):
            self.stages = stages_class(ckpt.flax_tree(), self.config, pointwise_as_dot=jax_fast)
        self._whole = JaxWholeImage(self.stages, self.timeline)
        self.lanes = list(self._whole.lanes)
        self.settings = {"jit": "whole forward",
                         "devices": (str(jax.devices()[0]) if not self.lanes else
                                     f"{self.devices} single-core CPU devices, inputs spread "
                                     "over them (port.host_devices)"),
                         "model": ("Flax NNX (graph split once, merged inside jax.jit)"
                                   if self.backend == "nnx" else "Flax Linen"),
                         "jax": jax.__version__,
                         "pointwise_convs": "dot_general" if jax_fast else "convolution",
                         "xla_flags": os.environ.get("XLA_FLAGS", "")}

    def _init_torch(self, ckpt, channels_last) -> None:
        with self.timeline.span("imports"):
            import torch

            from reference_torch.tiled import TorchStages

        with self.timeline.span("load_weights"):
            self.stages = TorchStages(ckpt.torch_state, self.config, channels_last,
                                      compile_whole=self.backend == "torch-compile")
        self.settings = {"threads": torch.get_num_threads(), "torch": torch.__version__,
                         "memory_format": "channels_last" if channels_last else "NCHW",
                         "mode": "inference_mode"}
        if self.backend == "torch-compile":
            self.settings.update({"compile": "torch.compile(backend='inductor')",
                                  "inductor_freezing": True})

    @property
    def devices(self) -> int:
        """The devices JAX computes on: one per core on a split CPU (port.host_devices)."""
        return max(1, len(self.lanes))

    # ---- plans -------------------------------------------------------------------------
    def plan(self, height: int, width: int, budget: int | None = None,
             tile: str | int | None = None, own_size: bool = False) -> ImagePlan:
        """frameworks.memory_plan.plan_image with this predictor's tile option (or
        `tile`); own_size: never a padded bucket."""
        return plan_image(height, width, self.config, self._memory_backend,
                          self.tile if tile is None else tile, budget, own_size)

    @property
    def _memory_backend(self) -> str:
        return "jax" if self.backend in JAX_BACKENDS else "torch"

    def in_buckets(self, plan: ImagePlan, height: int, width: int) -> bool:
        """JAX runs this whole image in the folder's buckets (else at its own shape)."""
        return (self.backend in JAX_BACKENDS and plan.mode == "whole"
                and plan.shape == bucket_shape(*landscape(height, width)))

    def plan_folder(self, sizes: list[tuple[int, int]], batch: int = 1) -> list:
        """JAX: the bucket shapes for a folder's bucketed whole images (their header
        sizes), counting shapes this cache folder has compiled before as free.
        PyTorch compiles nothing: no plan."""
        if self.backend not in JAX_BACKENDS or not sizes:
            return []
        compiled = self._index.compiled(batch) if self._index else set()
        if self._index:
            self.warnings += [w for w in self._index.warnings if w not in self.warnings]
        most = working_budget() // bytes_per_pixel(self.config, "jax")
        self._buckets = plan_buckets([landscape(*s) for s in sizes], COMPILE_PIXELS,
                                     compiled, most)
        return list(self._buckets)

    def group_key(self, plan: ImagePlan, height: int, width: int) -> tuple:
        """Whole images with one key run in one batch: JAX's planned bucket (or the
        image's own ladder bucket, or its own shape when only that fits) and
        orientation; PyTorch runs each image at its own size."""
        if self.backend not in JAX_BACKENDS:
            return (height, width)
        shape = landscape(height, width)
        if self.in_buckets(plan, height, width):
            shape = smallest_cover(self._buckets, shape) or plan.shape
        else:
            shape = plan.shape
        return tuple(shape) + (height > width,)

    def working_bytes(self, key: tuple, count: int = 1) -> int:
        """Working memory of a batch of `count` whole images of one group_key: what the
        key's shape computes (a merged bucket may be larger or smaller than an image's
        own ladder bucket)."""
        return int(count) * estimated_bytes(key[0], key[1], self.config, self._memory_backend)

    def compiled_lanes(self, key: tuple, count: int = 1) -> set[int]:
        """The lanes (indices into `lanes`) where a batch of `count` images of this key
        is compiled already in this process."""
        if self.backend not in JAX_BACKENDS:
            return set()
        return {lane for lane, device in enumerate(self.lanes)
                if self._whole.has_program(count, key[:2], device)}

    # ---- running -----------------------------------------------------------------------
    def submit(self, images: list[np.ndarray], key: tuple, after=(), device=None):
        """Whole images of one group_key; result() gives each (H, W, 3) output. JAX
        returns before computing; `after` (earlier submits' results) is awaited just
        before dispatching, so that one batch computes at a time per lane; `device`: one
        of `lanes` (None: every device)."""
        if self.backend in JAX_BACKENDS:
            pending = self._whole.submit(images, key[:2], after, device)
            if self._index:
                self._index.add(len(images), key[:2])
            return pending
        with self.timeline.span("compute", program=f"{len(images)}x{key[0]}x{key[1]}"):
            return Done([self.stages.whole(im) for im in images])

    def run_tiled(self, image: np.ndarray, plan: ImagePlan, show_progress: bool = False,
                  label: str = "") -> np.ndarray:
        total = len(self.stages.stages) * tile_count(image.shape[0], image.shape[1], plan.tile)
        bar = progress(None, desc=f"tiles {label}".strip(), unit="tile", total=total,
                       disable=not show_progress)
        try:
            with self.timeline.span("tiled", program=f"tiled {plan.tile}"):
                return run_tiled(self.stages, image, TiledPlan(plan.tile, plan.maps_in_memory),
                                 on_tile=lambda: bar.update(1), timeline=self.timeline)
        finally:
            bar.close()

    def predict(self, image: np.ndarray) -> np.ndarray:
        """One RGB float32 (H, W, 3) image -> the network's float32 output: whole at its
        own size (one image gains nothing from a bucket: it compiles one shape either
        way) when that fits the budget, else tiled."""
        image = np.asarray(image, np.float32)
        height, width = image.shape[:2]
        own = self.plan(height, width, tile="auto", own_size=True)
        if own.mode == "tiled":
            return self.run_tiled(image, own)
        return self.submit([image], tuple(own.shape) + (height > width,)).result()[0]

    # ---- timing ------------------------------------------------------------------------
    def prepare(self, x_nhwc: np.ndarray) -> None:
        """Place a (N, H, W, 3) batch for step(), and run one warm-up forward (JAX and
        torch.compile: the compilation)."""
        x = np.ascontiguousarray(x_nhwc, np.float32)
        if self.backend in JAX_BACKENDS:
            import jax

            program = self._whole.program(x.shape[0], x.shape[1:3], masked=False)
            self._prepared = (program, jax.device_put(
                x, self.stages.input_sharding(x.shape[:3])))
        else:
            self._prepared = self.stages.tensor(x)
        try:
            self.step()
        except Exception as err:  # noqa: BLE001 - any compiler failure means "unavailable"
            if self.backend == "torch-compile":
                reason = " ".join(str(err).split())[:300] or type(err).__name__
                raise BackendUnavailable(f"torch.compile failed: {reason}") from None
            raise

    def step(self) -> None:
        """One forward pass of the prepared batch, returning once its result exists."""
        if self.backend in JAX_BACKENDS:
            program, x = self._prepared
            program(self._whole.params(False), x).block_until_ready()
        else:
            self.stages.forward(self._prepared)

    @property
    def jax_forward(self):
        """(jitted plain forward, parameters, prepared input) for profiling."""
        return self._whole.plain, self._whole.params(False), self._prepared[1]
