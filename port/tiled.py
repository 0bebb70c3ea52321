"""The Flax DLN stage by stage: exact tiled and bucketed inference (core.tiling).

The stages call port.model's own submodules (through `DLN.apply(..., method=...)`)
with the checkpoint's parameters; port/model.py stays the one definition of the
network. Two things differ from the plain forward, both exact to float32 rounding:
- every convolution's output is multiplied by the validity mask (a Flax method
  interceptor), so zeros outside the image reproduce the convolutions' zero padding
  on padded tiles and buckets;
- each FA's mean is an input of its LBP stage (accumulated over the valid pixels of
  the whole image by core.tiling), or, in a bucket, the masked mean of the batch.
The FA's dense layers (no bias) are applied as the same products the Flax Dense
computes, on the same parameters; its 1x1 `outlayer` is port.model.ConvBlock.
1x1 convolutions are matrix products as in port.inference (port.pointwise).
port/nnx_tiled.py runs the same stages and whole-image runner on the NNX port.

JaxWholeImage is what `dln enhance` runs on whole images: each padded to its size
bucket (core.tiling.bucket_shape) with masking (a mask of ones where it fills the
bucket: one program per bucket); `program(..., masked=False)` is the plain forward,
for timing a batch that fills its shape (`dln bench`, Table 2); a portrait image
(height > width) runs transposed with every kernel's spatial axes swapped, which is the
transposed output (exact up to the order of float32 sums), so it shares the landscape
bucket's compiled program.
Images of one bucket and orientation are batched.

On a CPU split into one host device per core (port.host_devices: `dln enhance` does
it), JaxWholeImage has one lane per device: a batch submitted to a lane is compiled for
that device alone and computes on its core while the other lanes compute other batches
(`lanes`, `submit(..., device=)`). A batch submitted to no lane, and every tile, runs
over the mesh of all the devices, its input spread along the batch or in horizontal
bands (port.host_devices.spread_sharding); the parameters are replicated.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import SingleDeviceSharding

from core.config import DLNConfig
from core.timeline import Timeline
from core.tiling import bucket_batch, bucket_shape, crop, landscape
from port.host_devices import cpu_mesh, replicated, spread_sharding, unspread_device
from port.inference import PARITY_PRECISION, make_apply, params_to_device
from port.model import DLN, ConvBlock
from port.pointwise import pointwise_conv_as_dot
from weights.stages import LBP_NAMES, dln_stages


def _masking(mask, pointwise_as_dot: bool):
    """Interceptor: each nn.Conv's output times mask (and 1x1 convs as dots)."""
    def intercept(next_fun, args, kwargs, context):
        if context.method_name != "__call__" or not isinstance(context.module, nn.Conv):
            return next_fun(*args, **kwargs)
        if pointwise_as_dot:
            out = pointwise_conv_as_dot(next_fun, args, kwargs, context)
        else:
            out = next_fun(*args, **kwargs)
        return out * mask
    return intercept


def _model_input(module: DLN, x, mask):
    xs = (x - 0.5) * 2
    if module.config.brightness:
        xs = jnp.concatenate([xs, jnp.max(x, axis=-1, keepdims=True)], axis=-1)
    return xs * mask


def _f1(module: DLN, x, mask):
    return module.feat2(module.feat1(_model_input(module, x, mask)))


def _lbp(module: DLN, index: int, z, mean):
    """One LBP with its FA mean given: (N, h, w, cin) and (N, cin) -> (N, h, w, dim)."""
    name = LBP_NAMES[index]
    fusion = module.variables["params"][name]["fusion"]
    s = nn.relu(jnp.dot(mean, fusion["fc_0"]["kernel"]))
    w = nn.sigmoid(jnp.dot(s, fusion["fc_2"]["kernel"]))
    y = z * w[:, None, None, :] + z
    f = ConvBlock(module.config.dim, 1, 0).apply({"params": fusion["outlayer"]}, y)
    return lbp_after_fusion(getattr(module, name), f)


def lbp_after_fusion(lbp, f):
    """The LBP's body after its FA (`f`: the FA's output), by the LBP's own submodules;
    the Linen and the NNX LBP have the same submodule names and arithmetic."""
    hr = lbp.conv1_1(f)
    lr = lbp.conv2(hr)
    r = lbp.local_weight1_1(f) - lr if lbp.residual_sign == "code" else lr - lbp.local_weight1_1(f)
    return lbp.local_weight2_1(hr) + lbp.conv3(r)


def _final(module: DLN, z, x):
    return x + module.config.gamma * module.out(module.feature(z))


def _masked_mean(z, mask):
    return jnp.sum(z * mask, axis=(1, 2)) / jnp.sum(mask, axis=(1, 2))


class JaxStages:
    """core.tiling.StageRunner for the Linen port (weights.stages' table): one jit per
    stage, compiled once per tile shape. port.nnx_tiled.NnxStages is the same runner on
    the NNX port: a subclass supplies `_apply` (run a stage function on the model bound
    to the params, every convolution's output masked), `_lbp` and `plain_apply`."""

    def __init__(self, params_tree: dict, config: DLNConfig, pointwise_as_dot: bool = True):
        self.config = config
        self.dim = config.dim
        self.stages = dln_stages(config)
        self.pointwise_as_dot = pointwise_as_dot
        self._build_model()
        self.mesh = cpu_mesh()   # None: one device
        self._params = params_to_device(params_tree)
        self._params_on: dict = {}   # device id -> the parameters on that device alone
        self._dispatcher = None      # the thread that dispatches tiles over the mesh
        if self.mesh is not None:
            self._params = jax.device_put(self._params, replicated(self.mesh))
        self._stage = jax.jit(self._stage_forward, static_argnums=1)
        self._bucket = jax.jit(self._bucket_forward)

    def _build_model(self) -> None:
        self._model = DLN(config=self.config)

    def _apply(self, params, mask, fn, *args):
        # traced in true float32 ("highest"), as port.inference.make_apply
        with jax.default_matmul_precision(PARITY_PRECISION), \
                nn.intercept_methods(_masking(mask, self.pointwise_as_dot)):
            return self._model.apply({"params": params}, *args, method=fn)

    def _lbp(self, module, index: int, z, mean):
        return _lbp(module, index, z, mean)

    def plain_apply(self):
        """The plain whole-image forward jit(params, x) of this port, unmasked."""
        return make_apply(self.config, pointwise_as_dot=self.pointwise_as_dot)

    def _stage_forward(self, params, steps: tuple, maps, image, mean, mask):
        """One stage on a batch of tiles (input with halo) -> the tiles' cores. Its pieces
        (core.tiling.Stage.steps) run in order, each on what the one before left: the
        maps so far with its output appended, and the image and mask, all cropped by
        the halo it used up. `maps`: the stage maps' channel blocks (None: none)."""
        z = None if maps is None else jnp.concatenate(maps, axis=-1)
        for number, (name, halo) in enumerate(steps):
            if name == "f1":
                out = self._apply(params, mask, _f1, image, mask)
            elif name == "final":
                out = self._apply(params, mask, _final, z, image)
            else:
                index = int(name.removeprefix("lbp")) - 1
                out = self._apply(params, mask,
                                  lambda m, z_, s_: self._lbp(m, index, z_, s_), z, mean)
            out = crop(out, halo)
            if number + 1 < len(steps):
                z = out if z is None else jnp.concatenate([crop(z, halo), out], axis=-1)
                image, mask = crop(image, halo), crop(mask, halo)
        return out

    def _bucket_forward(self, params, x, mask):
        """Whole padded images (N, Hb, Wb, 3) with masks: every FA mean over valid pixels."""
        maps = [self._apply(params, mask, _f1, x, mask)]
        for index in range(3):
            z = jnp.concatenate(maps, axis=-1)
            fn = (lambda i: lambda m, z_, s_: self._lbp(m, i, z_, s_))(index)
            maps.append(self._apply(params, mask, fn, z, _masked_mean(z, mask)))
        return self._apply(params, mask, _final, jnp.concatenate(maps, axis=-1), x)

    def placed(self, array, spread: bool = True):
        """A host array (or None) as a program input: on the one device, or over the
        mesh's devices (spread: along the batch or in bands; else replicated)."""
        if array is None:
            return None
        if self.mesh is None:
            return array
        sharding = spread_sharding(array.shape, self.mesh) if spread else \
            replicated(self.mesh)
        return jax.device_put(array, sharding)

    def input_sharding(self, shape: tuple[int, ...]):
        """The sharding a whole-image program's input of this shape is compiled for
        (None: one device)."""
        return None if self.mesh is None else spread_sharding(shape, self.mesh)

    def params_on(self, device):
        """The parameters on one device alone (kept: placed once per device)."""
        if device.id not in self._params_on:
            self._params_on[device.id] = jax.device_put(self._params,
                                                        SingleDeviceSharding(device))
        return self._params_on[device.id]

    def start_stage(self, index, maps, image, mean, mask) -> "Fetch":
        stage = self.stages[index]
        one = unspread_device((1,) + mask.shape, self.mesh)
        if one is not None:   # a tile no axis of which divides over the devices
            put = (lambda a: None if a is None else
                   jax.device_put(a[None], SingleDeviceSharding(one)))
            return Fetch(self._stage(self.params_on(one), stage.steps,
                                     _each(put, maps), put(image), put(mean), put(mask)))
        batch = (lambda a: None if a is None else self.placed(a[None]))

        def dispatch():
            return self._stage(self._params, stage.steps, _each(batch, maps), batch(image),
                               self.placed(None if mean is None else mean[None],
                                           spread=False), batch(mask))

        if self.mesh is None:
            return Fetch(dispatch())
        # A program over several host devices is not dispatched asynchronously: the call
        # returns only once the one before it has computed (measured: 0.67 s, a whole
        # lbp tile, against 0.005 s on one device). It is called from a thread of its
        # own, so that the caller reads the next tile's inputs meanwhile.
        if self._dispatcher is None:
            self._dispatcher = ThreadPoolExecutor(1, thread_name_prefix="dln-tile-dispatch")
        return Fetch(self._dispatcher.submit(dispatch))

    @property
    def params(self):
        return self._params

    def bucket(self, x: np.ndarray, mask: np.ndarray, params=None) -> np.ndarray:
        """(N, Hb, Wb, 3) padded batch and (N, Hb, Wb, 1) masks -> (N, Hb, Wb, 3), with
        the checkpoint's parameters or the given ones (e.g. transposed)."""
        out = self._bucket(self._params if params is None else params, self.placed(x),
                           self.placed(mask))
        return np.asarray(jax.block_until_ready(out))


def _each(put, blocks):
    """put() of each map block (None stays None)."""
    return None if blocks is None else [put(block) for block in blocks]


class Fetch:
    """A dispatched stage tile: result() waits for it and brings its core to the host."""

    def __init__(self, out):
        self._out = out   # the program's output, or a future of it

    def result(self) -> np.ndarray:
        out = self._out.result() if isinstance(self._out, Future) else self._out
        return np.asarray(jax.block_until_ready(out))[0]


def transposed_params(tree: dict) -> dict:
    """Every convolution kernel (kh, kw, cin, cout) with its two spatial axes swapped,
    placed where the given parameters are. Swapped on the host (a copy of 2.8 MB at dim
    64): a jitted swap was one more program to compile per device, ~0.3 s of a cold
    run's main thread each beside the busy lanes."""
    def swapped(a):
        host = np.asarray(a)
        host = np.ascontiguousarray(np.swapaxes(host, 0, 1)) if host.ndim == 4 else host
        return jax.device_put(host, a.sharding)
    return jax.tree_util.tree_map(swapped, tree)


def _program_key(batch: int, shape: tuple[int, int], masked: bool, device) -> tuple:
    """JaxWholeImage's key of one compiled program."""
    return (int(batch), int(shape[0]), int(shape[1]), bool(masked),
            None if device is None else device.id)


def whole_group_key(height: int, width: int) -> tuple[int, int, bool]:
    """An image's own (landscape bucket shape, transposed)."""
    return bucket_shape(*landscape(height, width)) + (height > width,)


class JaxWholeImage:
    """Whole images, bucketed (masked), portrait ones transposed.

    Each program (batch size, landscape shape, masked or plain, device) is traced,
    lowered and compiled ahead of its first use (`program`), so a caller can compile the
    next shape while the current one computes; `submit` prepares a batch on the host and
    dispatches it without waiting, `Pending.result` waits and crops. `lanes`: the devices
    a batch may be submitted to alone (one per core on a split CPU; else none)."""

    def __init__(self, stages: JaxStages, timeline: Timeline | None = None):
        self.config = stages.config
        self._stages = stages
        self.plain = stages.plain_apply()
        self.lanes = [] if stages.mesh is None else list(stages.mesh.devices.flat)
        self._params = {(False, None): self._stages.params}
        self._programs: dict[tuple, object] = {}
        self._exported = None      # _any_shape's jitted call of the exported forward
        self._lock = threading.Lock()
        self.timeline = timeline or Timeline.off()

    def params(self, transposed: bool, device=None):
        """The parameters (kernels' spatial axes swapped when transposed) where a
        program runs: on `device`, or on the mesh / the one device (None)."""
        with self._lock:
            key = (bool(transposed), None if device is None else device.id)
            if key in self._params:
                return self._params[key]
            # on a split CPU this can wait until the devices have finished what they run
            with self.timeline.span("place_weights"):
                base = (self._params[(False, None)] if device is None else
                        self._stages.params_on(device))
                self._params[key] = transposed_params(base) if transposed else base
            return self._params[key]

    def program(self, batch: int, shape: tuple[int, int], masked: bool, device=None):
        """The compiled forward of (batch, *shape) images, masked (padded buckets) or
        plain (images that fill their shape), on `device` (one lane) or over the mesh /
        on the one device (None); compiled once per process (the persistent cache, when
        enabled, makes a later process's compilation a cache read)."""
        key = _program_key(batch, shape, masked, device)
        params = self.params(False, device)
        with self._lock:
            if key in self._programs:
                return self._programs[key]
            sharding = (self._stages.input_sharding(key[:3]) if device is None else
                        SingleDeviceSharding(device))
            x = jax.ShapeDtypeStruct((key[0], key[1], key[2], 3), jnp.float32,
                                     sharding=sharding)
            label = f"{key[0]}x{key[1]}x{key[2]}" + (" masked" if masked else "")
            with self.timeline.span("trace", program=label):
                if masked:
                    mask = jax.ShapeDtypeStruct((key[0], key[1], key[2], 1), jnp.float32,
                                                sharding=sharding)
                    one_device = device is not None or self._stages.mesh is None
                    forward = self._any_shape(params) if one_device else self._stages._bucket
                    lowered = forward.lower(params, x, mask)
                else:
                    lowered = self.plain.lower(params, x)
            with self.timeline.span("compile", program=label):
                self._programs[key] = lowered.compile()
            return self._programs[key]

    def _any_shape(self, params):
        """The masked bucket forward traced once for any batch and image shape (jax.export
        with symbolic dimensions), called by a program compiled per shape and device.
        Tracing the Flax forward once per shape took ~0.12-0.17 s each (most of it in
        Flax, which checks every parameter's shape against its initialiser); lowering a
        call of the exported forward ~0.03 s, and the compiled program computes the same
        values bit for bit (384x512 and 240x320 at dim 64, 2-core AMD EPYC). Only for
        programs on one device: a program over the mesh traces the forward itself."""
        if self._exported is None:
            from jax import export

            batch, height, width = export.symbolic_shape("batch, height, width")
            specs = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                           params)
            exported = export.export(self._stages._bucket, platforms=[jax.default_backend()])(
                specs, jax.ShapeDtypeStruct((batch, height, width, 3), jnp.float32),
                jax.ShapeDtypeStruct((batch, height, width, 1), jnp.float32))
            self._exported = jax.jit(exported.call)
        return self._exported

    def has_program(self, batch: int, shape: tuple[int, int], device) -> bool:
        """Whether submit's program for this batch and shape on `device` is compiled."""
        return _program_key(batch, shape, True, device) in self._programs

    def submit(self, images: list[np.ndarray], bucket: tuple[int, int] | None = None,
               after=(), device=None) -> "Pending":
        """Dispatch images of one orientation in `bucket` (landscape; default: the first
        image's whole_group_key bucket) on `device` (one of `lanes`; None: the mesh or
        the one device) and return at once. `after`: a Pending, or several, that must
        have computed before this batch is dispatched (its host work and compilation do
        not wait for them), so that one batch computes per lane at a time."""
        portrait = {im.shape[0] > im.shape[1] for im in images}
        if len(portrait) != 1:
            raise ValueError("images of one batch must share an orientation")
        transposed = portrait.pop()
        with self.timeline.span("host_prep", images=len(images)):
            batch = [np.swapaxes(im, 0, 1) if transposed else im for im in images]
            bucket = tuple(bucket or bucket_shape(*batch[0].shape[:2]))
            # masked even when every image fills the bucket (a mask of ones): one program
            # per bucket, where a bucket that pads some images and fills others would
            # compile two; measured on one lane of the 2-core AMD EPYC, the masked program
            # is no slower (384x512 1.78 s against 1.83 s plain, 600x800 4.77 against 4.90)
            x, mask = bucket_batch(batch, bucket)
        if device is None:   # over every device, unless no axis of the batch divides
            device = unspread_device((len(images),) + bucket, self._stages.mesh)
        program = self.program(len(images), bucket, True, device)
        params = self.params(transposed, device)
        after = [after] if isinstance(after, Pending) else [p for p in (after or ()) if p]
        if after:
            with self.timeline.span("wait_previous"):
                for earlier in after:
                    try:
                        earlier.wait()
                    except Exception:  # noqa: BLE001 - that batch's failure is its own,
                        pass           # reported when its result is fetched
        with self.timeline.span("dispatch"):
            start = time.time()
            out = program(params, x, mask)
        label = f"{len(images)}x{bucket[0]}x{bucket[1]} masked"
        return Pending(out, [im.shape[:2] for im in batch], transposed, self.timeline,
                       label + ("" if device is None else f" core {device.id}"), start,
                       pixels=len(images) * bucket[0] * bucket[1])

    def run(self, images: list[np.ndarray], bucket: tuple[int, int] | None = None
            ) -> list[np.ndarray]:
        """Images of one orientation -> their (H, W, 3) float32 outputs."""
        return self.submit(images, bucket).result()


class Pending:
    """A dispatched batch: wait() until it has computed (its "compute" span runs from
    the dispatch to the moment it is seen ready), result() for each image's output."""

    def __init__(self, out, shapes, transposed: bool, timeline: Timeline, label: str,
                 started: float, pixels: int = 0):
        self._out, self._shapes, self._transposed = out, shapes, transposed
        self._timeline, self.label, self.started = timeline, label, started
        self.pixels = pixels      # padded pixels computed (a lane's finish is predicted by it)
        self.finished = None      # time.time() when first seen computed
        self._lock = threading.Lock()
        self._computed = False

    def wait(self) -> None:
        # polled rather than blocked in XLA, so that a signal (Ctrl-C, SIGTERM) reaches
        # the waiting main thread at once
        while not self._computed and not self._ready():
            time.sleep(0.005)
        with self._lock:
            if not self._computed:
                jax.block_until_ready(self._out)  # ready: raises what the program raised
                self.finished = time.time()
                self._timeline.add("compute", self.started, self.finished,
                                   program=self.label, asynchronous=True)
                self._computed = True

    def computed(self) -> bool:
        """Whether the batch has computed (without waiting)."""
        return self._computed or self._ready()

    def _ready(self) -> bool:
        out = self._out
        return out is None or out.is_ready()

    def result(self) -> list[np.ndarray]:
        self.wait()
        with self._timeline.span("transfer", program=self.label):
            host = np.asarray(self._out)
            self._out = None
            outputs = [o[:h, :w] for o, (h, w) in zip(host, self._shapes)]
            return [np.swapaxes(o, 0, 1) if self._transposed else o for o in outputs]
