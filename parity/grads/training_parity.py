"""Training parity: the same initial weights and the same batches through both trainers.

`training_parity` trains the PyTorch reference and the Flax port side by side (each
in its own subprocess: torch and JAX computing gradients in one process have crashed
inside XLA, so neither side shares a process with the other) from seeded random
weights (non-zero biases, varied slopes: every tensor is exercised) on the same
seeded batches and the same per-step learning rates (constant, then divided by the
recipe's decay factor for the last quarter of the steps, so that every run also
checks a change of rate), then judges (parity/engine/tolerance.py says why each limit):
- finite: every loss and every final weight of both sides is finite (a NaN or an
  infinity anywhere fails, whatever the other figures say), and nothing is left
  uncompared (every step's loss, every tensor of the initial weights);
- first loss: step 1's loss, computed from identical weights on the identical batch
  (the loss function itself), TRAIN_FIRST_LOSS_RTOL;
- losses: each of the first 20 steps, TRAIN_LOSS_RTOL;
- final weights: every tensor, relative L2, TRAIN_WEIGHTS_RTOL;
- Adam moments: each tensor's first and second moments after the last step (relative
  L2, TRAIN_MOMENTS_RTOL): Adam's update is blind to a constant scale of one tensor's
  gradients (it divides by their RMS), its moments are not;
- updates: each tensor's update final - initial (relative L2, without its largest
  TRAIN_UPDATE_FLIP_FRACTION of element differences, TRAIN_UPDATE_RTOL; those elements
  held to TRAIN_UPDATE_FLIP_LR x lr), all tensors' updates together
  (TRAIN_UPDATE_TOTAL_RTOL), and each scalar (a PReLU slope) to TRAIN_SCALAR_FINAL_RTOL.
With `data_parallel_devices=N` the JAX worker also reruns the first steps on N devices
(on a CPU-only machine N forced host devices, XLA_FLAGS=
--xla_force_host_platform_device_count=N) and compares those losses with one device's.
`flax_frameworks=("jax", "nnx")` trains the Flax NNX port too, in the same JAX worker on
the same batches against the same PyTorch run: its result is `result.others["nnx"]`,
judged against PyTorch by the same rules, and against the Linen trainer step for step
(NNX_VS_LINEN_ATOL). With `defect=NAME` (parity.grads.training_zoo) the Linen trainer
carries that defect; the verdict must then be FAIL. `training_zoo` runs every defect
against one torch run.

Both sides train with core.recipe.AUTHORS_RECIPE (the learning rate may be given).
Worker entry point (used by the subprocesses, started by core.workers):
`python -m parity.grads.training_parity REQUEST.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from core.config import DLNConfig
from core.recipe import AUTHORS_RECIPE
from port.host_devices import DEVICE_COUNT_FLAG, THREADS_FLAG
from parity.engine.tolerance import TRAIN_UPDATE_FLIP_FRACTION, relative_l2
from parity.grads.training_result import (  # noqa: F401 (re-exported)
    DATA_PARALLEL_STEPS, LOSS_STEPS, TrainingParityResult, worst_of)
from parity.grads.training_zoo import DEFECTS, TrainingDefect
from frameworks.trainers import make_trainer
from core.workers import run_worker

# Textured built-in photographs for parity batches. The authors' SSIM computes variances
# as E[x^2] - E[x]^2 in float32, which cancels on flat crops (a white page, a clear
# sky): there the two frameworks' float32 losses alone differ by up to ~6e-3 relative
# (both within float32 rounding of that formula; float64 agrees with neither exactly),
# which says nothing about the trainers. On textured crops they agree to ~1e-5.
PARITY_DATA = "builtin:grass,gravel"


def parity_rates(lr: float, steps: int, factor: float = AUTHORS_RECIPE.lr_decay_factor
                 ) -> list[float]:
    """The per-step rates of a parity run: lr, then lr / factor for the last quarter of the
    steps (none with fewer than 4 steps), as the authors divide the rate in place."""
    decay_at = steps - steps // 4 if steps >= 4 else steps
    return [float(lr) if step < decay_at else float(lr) / factor for step in range(steps)]


# ---- the two sides, each run in a worker process --------------------------------------
def _stream(request: dict):
    from core.data import BatchStream, open_training_data

    data = open_training_data(request["data"], request["patch"], heldout="none")
    return BatchStream(data.source, request["batch"], request["patch"], request["seed"])


def _train_side(request: dict) -> dict[str, np.ndarray]:
    """Train request["steps"] steps at request["rates"], once per entry (framework, defect)
    of request["runs"] (defect None: the correct trainer; a name: that training zoo defect,
    Linen only), results under "<i>/"; with data_parallel_devices > 0, also the first
    DATA_PARALLEL_STEPS steps of the first Flax run again on that many devices (~10 s of
    compilation per trainer on 2 CPU cores: one is enough to check the data-parallel
    arithmetic the Linen and NNX steps share)."""
    from weights.training_checkpoint import TrainingCheckpoint

    config = DLNConfig.from_json(request["config"])
    with np.load(request["init"]) as init:
        params = {k: init[k] for k in init.files}
    stream = _stream(request)
    recipe = dataclasses.replace(AUTHORS_RECIPE, lr=request["rates"][0], seed=request["seed"])

    def run(framework: str, devices: int | None, steps: int, defect: TrainingDefect | None):
        own_step = defect is not None and not defect.rates_only
        hooks = defect.step_hooks() if own_step else None
        rates = request["rates"] if defect is None else defect.jax_rates(request["rates"])
        # a defect with a step of its own runs on the plain autodiff step
        # (fast_gradients=False): its hooks act on the gradients and the update, the same
        # in both steps, and it compiles in ~7 s instead of ~17 s (dim 16, 2 x 32^2,
        # loaded 2-core EPYC); the correct run is the step `dln train` runs (the
        # rewrites, on a CPU), and a defect of the rates alone (lr-plus-1pct,
        # schedule-one-step-early) runs that very step (port.trainer.make_train_step
        # caches it: no compilation; ~7 s less per such defect)
        trainer = make_trainer(framework, config, TrainingCheckpoint(params),
                               defect.jax_recipe(recipe) if own_step else recipe,
                               devices=devices, hooks=hooks,
                               **({"fast_gradients": False} if own_step else {}))
        losses = []
        for step in range(steps):
            low, high = stream.batch_at(step)
            losses.append(trainer.loss_value(trainer.step(low, high, rates[step])))
        return np.asarray(losses, np.float64), trainer

    out = {}
    for i, (framework, name) in enumerate(request["runs"]):
        losses, trainer = run(framework, 1, request["steps"],
                              None if name is None else DEFECTS[name])
        out[f"{i}/losses"] = losses
        state = trainer.export()
        for part, table in (("w", state.params), ("mu", state.mu), ("nu", state.nu)):
            out.update({f"{i}/{part}/{k}": v for k, v in (table or {}).items()})
    devices = int(request.get("data_parallel_devices", 0))
    framework, name = request["runs"][0]
    if devices and framework != "torch":
        out["losses_data_parallel"], _ = run(framework, devices,
                                             min(DATA_PARALLEL_STEPS, request["steps"]), None)
    stream.close()
    return out


def _worker(request_path: str) -> int:
    request = json.loads(Path(request_path).read_text())
    np.savez(request["result"], **_train_side(request))
    return 0


def _run_worker(request: dict, workdir: Path, env_extra: dict | None = None) -> dict:
    label = "torch" if request["runs"] == [["torch", None]] else "flax"
    path = workdir / f"request_{label}.json"
    request = {**request, "result": str(path.with_suffix(".npz"))}
    path.write_text(json.dumps(request))
    run_worker("parity.grads.training_parity", path, label=label, env=env_extra)
    with np.load(request["result"]) as result:
        return {k: result[k] for k in result.files}


def _initial_params(config: DLNConfig, seed: int) -> dict[str, np.ndarray]:
    from weights.training_checkpoint import torch_to_flax_state
    from weights.synthetic import random_torch_state

    return torch_to_flax_state(random_torch_state(config, seed), config)


def _run_both(config: DLNConfig, steps: int, batch: int, patch: int, lr: float, seed: int,
              data: str, initial: dict | None, runs: list[tuple[str, str | None]],
              data_parallel_devices: int = 0):
    """(initial weights, rates, the torch side, the Flax side) of one trajectory; runs:
    (Flax framework, training defect or None) for each Flax run."""
    if data_parallel_devices and batch % data_parallel_devices:
        raise ValueError(f"batch {batch} does not split over {data_parallel_devices} devices")
    unknown = [name for _, name in runs if name is not None and name not in DEFECTS]
    if unknown:
        raise ValueError(f"unknown training defect {unknown[0]!r} (known: {', '.join(DEFECTS)})")
    if any(name is not None and framework != "jax" for framework, name in runs):
        raise ValueError("training defects are injected into the Linen trainer (\"jax\") only")
    initial = _initial_params(config, seed) if initial is None else {
        k: np.asarray(v, np.float32) for k, v in initial.items()}
    rates = parity_rates(lr, int(steps))
    env = {}
    if data_parallel_devices:
        flags = os.environ.get("XLA_FLAGS", "")
        # the split `dln train` makes of a CPU (port.host_devices), at this device count
        env["XLA_FLAGS"] = (f"{flags} {DEVICE_COUNT_FLAG}={data_parallel_devices} "
                            f"{THREADS_FLAG}=false")
    with tempfile.TemporaryDirectory(prefix="dln_train_parity_") as tmp:
        workdir = Path(tmp)
        np.savez(workdir / "init.npz", **initial)
        request = {"config": config.to_json(), "steps": int(steps), "batch": int(batch),
                   "patch": int(patch), "rates": rates, "seed": int(seed), "data": data,
                   "init": str(workdir / "init.npz"),
                   "data_parallel_devices": int(data_parallel_devices)}
        torch_side = _run_worker({**request, "runs": [["torch", None]]}, workdir)
        jax_side = _run_worker({**request, "runs": [list(r) for r in runs]}, workdir, env)
    return initial, rates, torch_side, jax_side


def _compare(config: DLNConfig, steps: int, batch: int, patch: int, lr: float,
             initial: dict, rates: list[float], torch_side: dict, jax_side: dict, run: int,
             defect: str | None, data_parallel_devices: int = 0,
             framework: str = "jax") -> TrainingParityResult:
    """The result of Flax run `run` (index into the runs of _run_both) against torch's."""
    weight_rel, update_rel, trimmed, most, moment_rel = {}, {}, {}, {}, {}
    moved_t, moved_j, finite = [], [], True
    losses_t, losses_j = torch_side["0/losses"], jax_side[f"{run}/losses"]
    finite = bool(np.all(np.isfinite(losses_t)) and np.all(np.isfinite(losses_j)))
    for name, start in initial.items():
        w_t, w_j = torch_side.get(f"0/w/{name}"), jax_side.get(f"{run}/w/{name}")
        moments = [(torch_side.get(f"0/{m}/{name}"), jax_side.get(f"{run}/{m}/{name}"))
                   for m in ("mu", "nu")]
        arrays = [w_t, w_j, *(a for pair in moments for a in pair)]
        if any(a is None or a.shape != start.shape for a in arrays):
            weight_rel[name] = update_rel[name] = trimmed[name] = most[name] = float("nan")
            moment_rel[name] = float("nan")
            finite = False
            continue
        finite = finite and all(bool(np.all(np.isfinite(a))) for a in arrays)
        moment_rel[name] = worst_of({m: relative_l2(j, t) for m, (t, j) in
                                     zip(("mu", "nu"), moments)})[1]
        weight_rel[name] = relative_l2(w_j, w_t)
        update_rel[name] = relative_l2(w_j - start, w_t - start)
        trimmed[name], most[name] = _trimmed_update(w_j - start, w_t - start, lr)
        if start.size > 1:
            moved_j.append((w_j - start).ravel())
            moved_t.append((w_t - start).ravel())
    total = (_trimmed_update(np.concatenate(moved_j), np.concatenate(moved_t), lr)[0]
             if moved_j else float("nan"))
    return TrainingParityResult(
        config, steps, batch, patch, lr, [float(x) for x in losses_t],
        [float(x) for x in losses_j], weight_rel, update_rel,
        [float(x) for x in jax_side.get("losses_data_parallel", [])] if run == 0 else [],
        int(data_parallel_devices) if run == 0 else 0, trimmed, most, total,
        tuple(k for k, v in initial.items() if v.size == 1), list(rates), finite, defect,
        moment_rel, framework,
        {name: jax_side[f"{run}/w/{name}"] for name in initial if f"{run}/w/{name}" in jax_side})


def training_parity(config: DLNConfig = DLNConfig(), steps: int = LOSS_STEPS, batch: int = 2,
                    patch: int = 48, lr: float = AUTHORS_RECIPE.lr, seed: int = 0,
                    data: str = PARITY_DATA,
                    data_parallel_devices: int = 0,
                    initial: dict[str, np.ndarray] | None = None,
                    defect: str | None = None,
                    flax_frameworks: tuple[str, ...] = ("jax",)) -> TrainingParityResult:
    """Train both frameworks `steps` steps from the same weights on the same batches.

    lr defaults to the authors' (core.recipe); the run divides it by the recipe's decay
    factor for its last quarter (parity_rates). data_parallel_devices = N > 1 also runs
    the JAX side's first steps on N devices (forced host devices on a CPU-only machine)
    and compares their losses with the single-device run; the batch must divide by N.
    `initial` (flat Flax-named weights, e.g. a Checkpoint's flax_params) replaces the
    seeded random starting weights. `defect` (a parity.grads.training_zoo name) is
    injected into the Linen trainer. flax_frameworks: the Flax trainers to run, in one
    worker; the result is the first one's, the others are in `result.others`.
    """
    runs = [(flax_frameworks[0], defect), *((fw, None) for fw in flax_frameworks[1:])]
    initial, rates, torch_side, jax_side = _run_both(
        config, steps, batch, patch, lr, seed, data, initial, runs, data_parallel_devices)
    results = [_compare(config, steps, batch, patch, lr, initial, rates, torch_side, jax_side,
                        i, name, data_parallel_devices if i == 0 else 0, framework)
               for i, (framework, name) in enumerate(runs)]
    results[0].others = {r.framework: r for r in results[1:]}
    return results[0]


def training_zoo(config: DLNConfig = DLNConfig(), steps: int = LOSS_STEPS, batch: int = 2,
                 patch: int = 48, lr: float = AUTHORS_RECIPE.lr, seed: int = 0,
                 data: str = PARITY_DATA, initial: dict[str, np.ndarray] | None = None,
                 names: list[str] | None = None, data_parallel_devices: int = 0,
                 flax_frameworks: tuple[str, ...] = ("jax",)):
    """The correct JAX trainer and every training defect (or `names`) on one trajectory,
    against one torch run: a parity.grads.training_zoo_report.TrainingZooReport (its
    `correct` is the plain training_parity result, data parallel check and the other
    flax_frameworks included; the defects are injected into the Linen trainer)."""
    from parity.grads.training_zoo_report import TrainingZooReport

    names = list(DEFECTS) if names is None else list(names)
    runs = [*((fw, None) for fw in flax_frameworks), *(("jax", name) for name in names)]
    initial, rates, torch_side, jax_side = _run_both(
        config, steps, batch, patch, lr, seed, data, initial, runs, data_parallel_devices)
    results = [_compare(config, steps, batch, patch, lr, initial, rates, torch_side, jax_side,
                        i, name, data_parallel_devices if i == 0 else 0, framework)
               for i, (framework, name) in enumerate(runs)]
    flax = len(flax_frameworks)
    results[0].others = {r.framework: r for r in results[1:flax]}
    return TrainingZooReport(results[0], dict(zip(names, results[flax:])))


def _trimmed_update(update_jax: np.ndarray, update_torch: np.ndarray, lr: float
                    ) -> tuple[float, float]:
    """(relative L2 of the update without its largest TRAIN_UPDATE_FLIP_FRACTION of element
    differences, at least one; the largest element difference in units of lr). A NaN
    difference sorts as the largest, so it is held to the lr bound (and fails there)."""
    a = np.asarray(update_jax, np.float64).ravel()
    r = np.asarray(update_torch, np.float64).ravel()
    diff = np.abs(a - r)
    if not diff.size:
        return float("nan"), float("nan")
    most = float(np.max(diff) / lr) if np.all(np.isfinite(diff)) else float("inf")
    if diff.size < 2:
        return relative_l2(a, r), most
    drop = max(1, int(diff.size * TRAIN_UPDATE_FLIP_FRACTION))
    keep = np.argsort(np.nan_to_num(diff, nan=np.inf))[:diff.size - drop]
    return relative_l2(a[keep], r[keep]), most


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
