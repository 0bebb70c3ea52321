"""JAX on a CPU split into one XLA device per core: training steps and inference.

On a CPU, XLA runs one program with its operations spread over a pool of threads (one
per core). DLN's training step at batch 4 x 96^2 keeps the two cores of a 2-core AMD
EPYC busy only part of the time that way: its trace holds 1.8 s of operation time in
a 1.4 s step, where two fully busy cores would give 2.8 s. Split into one XLA host
device per core (`--xla_force_host_platform_device_count`), each device computing its
share of the batch on its own core (`--xla_cpu_multi_thread_eigen=false`), the same
step is data parallel across the cores, exactly as port.trainer runs it across GPUs:
the loss is still the mean over the whole batch (XLA adds the cross-device sums), so
the numbers are those of one device up to the order of float32 sums (training parity
reruns its first steps split over two host devices this way and holds their losses to
one device's: parity.grads.training_parity).

The split has to be chosen before JAX starts its CPU backend (XLA reads XLA_FLAGS
once), so `dln train` applies it as the process starts, and `dln bench --workload
train` starts its JAX worker with the same flags. It is not applied when the batch
does not split evenly over at least two cores, when the user's XLA_FLAGS already name
a host device count, or when JAX has already started. Its cost: each device runs on
one core, so a core another program keeps busy slows the whole step (the devices
meet at every step's gradient sum); inference in the same process (a held-out check
during training) runs over the same devices, each image in horizontal bands.

Inference (`dln enhance` on JAX, `split_cpu_for_inference`) uses the same split
differently: each whole-image batch is compiled for one device and computes on its core
while the other device computes another batch, the lanes together within the memory
budget (dln.compute_lanes); a batch nothing could compute beside, and every tile of a
tiled image, runs over the mesh of all the devices (`cpu_mesh`), its input spread
along the first axis that divides evenly (`spread_sharding`): along the batch, one
image per core, or in horizontal bands, XLA
exchanging the convolutions' border rows and summing the feature means across devices.
Measured on the 2-core AMD EPYC at dim 64 (ms per image, one process each, quiet): two
images side by side, one per device / one device on both cores / one image in two
bands: 240x320 655 / 930 / 745; 480x640 2,607 / 3,056 / 2,805; 768x1024 6,893 / 7,313 /
7,410: XLA's threads use two cores worst on small images.
"""

from __future__ import annotations

import os
import shlex

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
THREADS_FLAG = "--xla_cpu_multi_thread_eigen"
SPLIT_VARIABLE = "DLN_CPU_SPLIT"   # one of OFF_WORDS: no split (--cpu-split's default)
OFF_WORDS = ("off", "0", "false", "no")


def switched_off(environ, variable: str) -> bool:
    """Whether `variable` of `environ` is off, 0, false or no (any case, spaces around)."""
    return environ.get(variable, "auto").strip().lower() in OFF_WORDS


def split_wanted(environ=None) -> bool:
    """Whether the environment (default: this process's) leaves the split on: DLN_CPU_SPLIT
    set to off, 0, false or no (any case) turns it off."""
    return not switched_off(os.environ if environ is None else environ, SPLIT_VARIABLE)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; cgroup quotas not counted)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def training_device_count(batch: int, cores: int | None = None) -> int:
    """How many host devices the training step splits a CPU into: the largest count up to
    the usable cores that divides the batch (1: no split)."""
    cores = usable_cores() if cores is None else max(1, int(cores))
    return max(d for d in range(1, min(cores, max(1, int(batch))) + 1) if batch % d == 0)


def training_xla_flags(batch: int, existing: str = "", cores: int | None = None) -> str | None:
    """XLA_FLAGS for a training process: `existing` plus the split, or None when there is
    nothing to add (one device, or `existing` already names a host device count)."""
    return split_xla_flags(training_device_count(batch, cores), existing)


def split_xla_flags(count: int, existing: str = "") -> str | None:
    """`existing` XLA_FLAGS plus a split into `count` single-core host devices, or None
    when there is nothing to add (count < 2, or `existing` names a host device count)."""
    words = shlex.split(existing or "")
    if any(w.split("=", 1)[0] == DEVICE_COUNT_FLAG for w in words):
        return None
    if count < 2:
        return None
    added = [f"{DEVICE_COUNT_FLAG}={count}"]
    if not any(w.split("=", 1)[0] == THREADS_FLAG for w in words):
        added.append(f"{THREADS_FLAG}=false")
    return " ".join(words + added)


def split_cpu_for_training(batch: int, environ: dict | None = None) -> int:
    """Set XLA_FLAGS in `environ` (default: this process's) for a training step at this
    batch, before JAX starts. Returns the host device count it set, or 0 when it set
    nothing (see training_xla_flags; or JAX's backend already running here)."""
    environ = os.environ if environ is None else environ
    if environ is os.environ and _jax_started():
        return 0
    flags = training_xla_flags(batch, environ.get("XLA_FLAGS", ""))
    if flags is None:
        return 0
    environ["XLA_FLAGS"] = flags
    return training_device_count(batch)


# Inference splits a CPU of exactly INFERENCE_CORES cores, the one measured. On 3 or 4
# cores most work that runs over all devices would not divide: 17 of the 22 ladder sides
# from 32 to 1280 are not multiples of 3, and a default tile's 530-pixel stage inputs are
# multiples of neither 3 nor 4, so it would run on one core where XLA's threads use all.
INFERENCE_CORES = 2


def inference_device_count(cores: int | None = None) -> int:
    """How many host devices inference splits a CPU into (1: no split)."""
    cores = usable_cores() if cores is None else max(1, int(cores))
    return cores if cores == INFERENCE_CORES else 1


def split_cpu_for_inference(environ: dict | None = None, cores: int | None = None) -> int:
    """Set XLA_FLAGS in `environ` (default: this process's) for inference on one
    single-core host device per core, before JAX starts. Returns the device count set,
    or 0 when it set nothing (no split wanted or possible, a host device count already in
    XLA_FLAGS, or JAX's backend already running in this process)."""
    environ = os.environ if environ is None else environ
    if not split_wanted(environ) or (environ is os.environ and _jax_started()):
        return 0
    count = inference_device_count(cores)
    flags = split_xla_flags(count, environ.get("XLA_FLAGS", ""))
    if flags is None:
        return 0
    environ["XLA_FLAGS"] = flags
    return count


def cpu_mesh():
    """A one-axis ("cores") mesh over this process's host devices when JAX computes on
    the CPU and has more than one of them (the split above, or the user's own XLA_FLAGS);
    else None (one device: programs run as compiled by plain jax.jit)."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    if jax.default_backend() != "cpu":
        return None
    devices = jax.devices("cpu")
    if len(devices) < 2:
        return None
    return Mesh(np.array(devices), ("cores",))


def replicated(mesh):
    """The sharding that puts a whole array on every device of `mesh`."""
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec())


def spread_axis(shape: tuple[int, ...], devices: int) -> int | None:
    """The axis an (N, H, W, ...) input spreads along over `devices`: the batch when it
    divides evenly (one image per core, no communication), else the height (bands: XLA
    exchanges border rows), else the width; None when no axis divides."""
    for axis in range(min(3, len(shape))):
        if shape[axis] >= devices and shape[axis] % devices == 0:
            return axis
    return None


def spread_sharding(shape: tuple[int, ...], mesh):
    """The sharding of an input of `shape` over `mesh` along spread_axis; replicated
    when no axis divides (every device computes the whole input: correct, not faster)."""
    from jax.sharding import NamedSharding, PartitionSpec

    axis = spread_axis(shape, int(mesh.devices.size))
    if axis is None:
        return replicated(mesh)
    spec = [None] * len(shape)
    spec[axis] = "cores"
    return NamedSharding(mesh, PartitionSpec(*spec))


def unspread_device(shape: tuple[int, ...], mesh):
    """The one device an input of `shape` computes on when no axis of it divides evenly
    over `mesh` (spread_axis None), else None (it spreads). Replicated instead, every
    device would compute the whole input and hold its whole working memory: measured with
    XLA's memory analysis at dim 16, a 801x1025 image replicated over 2 devices takes 451
    MiB of temporaries on each (902 in all) where one device takes 451, and no less time
    (each core computes all of it), while the other lanes could compute other batches."""
    if mesh is None or spread_axis(shape, int(mesh.devices.size)) is not None:
        return None
    return mesh.devices.flat[0]


def _jax_started() -> bool:
    import sys

    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()
