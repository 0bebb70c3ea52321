"""`dln bench --workload folder|large`: end-to-end runs of `dln enhance`, per backend.

Each row is one fresh `python -m dln.cli enhance` process on the same inputs and
weights, timed from start to exit (framework import, checkpoint loading, decoding,
compilation, inference, PNG writing: what a user waits for), with the process's
peak resident set from wait4. Workloads (seeded, made from scikit-image's bundled
photographs resized and darkened with the authors' recipe, core.lowlight):
- folder: FOLDER_IMAGES low-light images of mixed sizes from 240x320 to 1024x768,
  drawn from common camera and screen sizes in both orientations; JAX runs twice on
  one cache folder (cold: empty; warm: a second run that compiles nothing);
- large: one 12-megapixel (3000x4000) photo, tiled (--tile DEFAULT_TILE).
Rows: jax, torch (eager, channels_last), torch with glibc's allocator tuned
(TUNED_GLIBC: keeps freed buffers instead of returning them to the OS), and
torch-compile. PyTorch's OpenMP threads wait passively (libgomp's busy-wait
collapses when anything else shares the cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from core.tiling import DEFAULT_TILE

WORKLOADS = ("folder", "large")
FOLDER_IMAGES = 12
FOLDER_SIZES = ((240, 320), (300, 400), (360, 480), (384, 512), (480, 640), (600, 800),
                (576, 768), (768, 1024), (320, 240), (480, 360), (640, 480), (1024, 768))
LARGE_SIZE = (3000, 4000)
SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
TUNED_GLIBC = ("glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=17179869184:"
               "glibc.malloc.top_pad=268435456")
ROWS = ("jax", "torch", "torch-tuned-glibc", "torch-compile")
# Rows run only when asked for: JAX on one device with all cores (DLN_CPU_SPLIT=off),
# against the default row's one device per core (port.host_devices).
EXTRA_ROWS = ("jax-one-device",)
# Floors, measured in one run on the same machine.
FLOOR_FOLDER_COLD = 1.4    # JAX end to end, cold cache, at least 1.4x PyTorch eager
FLOOR_FOLDER_WARM = 1.5    # warm cache
FLOOR_FOLDER_TUNED = 1.3   # warm cache, against PyTorch with the tuned glibc allocator
FLOOR_OVER_COMPUTE = 1.15  # JAX total at most 15% above its compute (with --profile)
FLOOR_LARGE_SPEEDUP = 1.3  # 12 MP, tiled both
FLOOR_LARGE_RSS_MIB = 3 * 1024


def _lowlight_photo(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    from core.lowlight import DarkeningDraw, builtin_image, darken

    source = builtin_image(SOURCES[int(rng.integers(len(SOURCES)))])
    resized = np.asarray(Image.fromarray(source).resize((width, height), Image.BICUBIC))
    return darken(resized, DarkeningDraw.sample(rng))


def write_workload(name: str, folder: Path, seed: int = 0, limit: int | None = None
                   ) -> list[Path]:
    """The workload's images as PNGs (folder) or a JPEG (large) in `folder` (only the
    first `limit` of the folder when given: the same images, fewer of them)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    if name == "large":
        path = folder / "photo_12mp.jpg"
        Image.fromarray(_lowlight_photo(*LARGE_SIZE, rng)).save(path, quality=92)
        return [path]
    picks = rng.permutation(len(FOLDER_SIZES))[:FOLDER_IMAGES]
    paths = []
    for i, pick in enumerate(picks[:limit]):
        path = folder / f"low_{i:02d}.png"
        Image.fromarray(_lowlight_photo(*FOLDER_SIZES[pick], rng)).save(path)
        paths.append(path)
    return paths


def run_enhance(weights: str, backend: str, inputs: Path, out: Path, extra_env: dict,
                extra_args: list[str], profile: Path | None = None) -> dict:
    """One `dln enhance` process: wall seconds, peak RSS (MiB), exit code; with
    `profile`, its --profile timeline there and the account of it (parity.bench.run_profile)."""
    env = {**os.environ, "DLN_NO_PROGRESS": "1", **extra_env}
    cmd = [sys.executable, "-m", "dln.cli", "enhance", "--weights", weights, "--backend",
           backend, "--out", str(out), "--overwrite", *extra_args, str(inputs)]
    if profile:
        cmd[4:4] = ["--profile", str(profile)]
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: it cannot fill and block
        started = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL,
                                stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        ended = started + seconds
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        err = stderr.read().decode(errors="replace").strip().splitlines()
    # ru_maxrss of the child is the larger of its own peak and this (small) parent's RSS at
    # the fork; the parent only generates PNGs, so the figure is the enhance process's.
    figures = {"total_s": seconds, "peak_rss_mib": usage.ru_maxrss / 1024, "exit_code": code,
               "last_error": err[-1] if err and code else None}
    if profile and code == 0:
        from parity.bench.run_profile import account, load

        figures["account"] = account(load(profile), started, ended)
    return figures


def run_workload(name: str, weights: str, rows: tuple[str, ...] = ROWS, seed: int = 0,
                 show_progress: bool = True, profile: bool = False) -> dict:
    """Every row's `dln enhance` process on the workload; with profile, each run's
    account of its time and the compute reference (per_image_reference)."""
    from core.progress import progress

    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}")
    result_rows = []
    with tempfile.TemporaryDirectory(prefix=f"dln-bench-{name}-") as tmp:
        tmp = Path(tmp)
        images = write_workload(name, tmp / "in", seed)
        inputs = images[0] if name == "large" else tmp / "in"
        extra_args = ["--tile", str(DEFAULT_TILE)] if name == "large" else []
        plan = []
        for row in rows:
            if row in ("jax", "jax-one-device"):
                # each row says whether it splits, whatever this process's environment says
                env = {"DLN_CACHE_DIR": str(tmp / f"{row}-cache"),
                       "DLN_CPU_SPLIT": "off" if row == "jax-one-device" else "auto"}
                plan.append((row, "jax", env, "cold"))
                if name == "folder":
                    plan.append((row, "jax", env, "warm"))
            elif row == "torch-tuned-glibc":
                plan.append((row, "torch", {"GLIBC_TUNABLES": TUNED_GLIBC}, None))
            else:
                plan.append((row, row, {}, None))
        for label, backend, env, cache_state in progress(plan, desc=f"workload {name}",
                                                         unit="run", disable=not show_progress):
            if backend.startswith("torch") and "OMP_WAIT_POLICY" not in os.environ:
                env = {**env, "OMP_WAIT_POLICY": "PASSIVE"}
            trace = tmp / f"profile-{label}-{cache_state or 'run'}.json" if profile else None
            figures = run_enhance(weights, backend, inputs, tmp / f"out-{label}", env,
                                  extra_args, trace)
            row = {"backend": label, "total_s": figures["total_s"], "images": len(images),
                   "peak_rss_mib": figures["peak_rss_mib"], "exit_code": figures["exit_code"]}
            if "account" in figures:
                row["account"] = figures["account"]
            if cache_state:
                row["cache"] = cache_state
            if figures["last_error"]:
                row["error"] = figures["last_error"]
            result_rows.append(row)
        image_sizes = [tuple(int(v) for v in _png_size(p)) for p in images]
        sizes = sorted(set(image_sizes))
    result = {"workload": name, "rows": result_rows, "seed": seed,
              "image_sizes_hxw": [list(s) for s in sizes], "weights": weights}
    if profile and any(r["backend"] == "jax" for r in result_rows):
        result["reference"] = per_image_reference(name, weights, image_sizes)
    result["floors"] = workload_floors(name, result_rows, result.get("reference"))
    return result


def per_image_reference(name: str, weights: str, sizes: list[tuple[int, int]]) -> dict:
    """What the JAX run's compute should cost, from `dln bench`'s per-image forward (one
    image at exactly its size, compiled beforehand, best of two; a fresh worker):
    folder: the sum over its images; large: its tiles at the per-image rate, i.e. the
    seconds per pixel of one whole DEFAULT_TILE x DEFAULT_TILE image times the pixels
    the tiles compute (tile + 2 x halo on each side, per piece of a stage, weighted by
    the piece's share of the network's FLOPs)."""
    from parity.bench.benchmark import WorkerProcess
    from weights.convert import load_checkpoint

    worker = WorkerProcess("jax per-image reference")
    try:
        worker.request({"op": "setup", "backend": "jax", "weights": weights, "batch": 1,
                        "height": 32, "width": 32}, timeout=900)
        if name == "folder":
            seconds = worker.request({"op": "per_image", "sizes": [list(s) for s in sizes],
                                      "repeats": 2}, timeout=1800)["seconds"]
            return {"what": "sum of per-image compute", "seconds": float(sum(seconds)),
                    "per_image_s": seconds, "sizes_hxw": [list(s) for s in sizes]}
        tile = DEFAULT_TILE
        one = worker.request({"op": "per_image", "sizes": [[tile, tile]], "repeats": 2},
                             timeout=900)["seconds"][0]
    finally:
        worker.close()
    pixels = tiled_pixels(load_checkpoint(weights).config, *sizes[0], tile)
    return {"what": f"tiles at the per-image rate of one {tile}x{tile} image",
            "seconds": one / (tile * tile) * pixels, "rate_s_per_mp": one / (tile * tile) * 1e6,
            "tiled_pixels": pixels}


def tiled_pixels(config, height: int, width: int, tile: int) -> float:
    """Pixels a tiled run computes, FLOP-weighted: each stage piece's tiles with the
    halos it computes over (its own and the later pieces') times the piece's share of
    the network's FLOPs."""
    from core.tiling import tile_count
    from parity.bench.flops import layer_flops
    from weights.stages import LBP_NAMES, dln_stages

    flops = layer_flops(config, 64, 64)
    stage_of = {"feat1": "f1", "feat2": "f1", "feature": "final", "out": "final",
                **{lbp: f"lbp{i + 1}" for i, lbp in enumerate(LBP_NAMES)}}
    share: dict[str, float] = {}
    for layer, f in flops.items():
        stage = stage_of[layer.split(".")[0]]
        share[stage] = share.get(stage, 0.0) + f
    total = sum(share.values())
    count = tile_count(height, width, tile)
    pixels = 0.0
    for stage in dln_stages(config):
        left = stage.halo   # a stage's piece computes its tile plus the halos still to use
        for name, halo in stage.steps:
            pixels += share[name] / total * count * (tile + 2 * left) ** 2
            left -= halo
    return pixels


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


def workload_floors(name: str, rows: list[dict], reference: dict | None = None) -> list[dict]:
    def seconds(backend, cache=None):
        for row in rows:
            if row["backend"] == backend and row.get("cache") == cache and \
                    row.get("exit_code") == 0:
                return row["total_s"]
        return None

    floors = []
    torch_s = seconds("torch")
    checks = ([("folder jax cold / torch eager", seconds("jax", "cold"), FLOOR_FOLDER_COLD),
               ("folder jax warm / torch eager", seconds("jax", "warm"), FLOOR_FOLDER_WARM)]
              if name == "folder" else
              [("12 MP jax / torch eager (tiled both)", seconds("jax", "cold"),
                FLOOR_LARGE_SPEEDUP)])
    for label, jax_s, threshold in checks:
        if jax_s and torch_s:
            ratio = torch_s / jax_s
            floors.append({"floor": label, "value": ratio, "threshold": threshold,
                           "passed": ratio >= threshold})
    tuned = seconds("torch-tuned-glibc")
    if name == "folder" and tuned and seconds("jax", "warm"):
        floors.append({"floor": "folder jax warm / torch-tuned-glibc", "threshold":
                       FLOOR_FOLDER_TUNED, "value": tuned / seconds("jax", "warm"),
                       "passed": tuned / seconds("jax", "warm") >= FLOOR_FOLDER_TUNED})
    if reference:
        jax_s = seconds("jax", "warm" if name == "folder" else "cold")
        if jax_s:
            ratio = jax_s / reference["seconds"]
            floors.append({"floor": f"{name} jax total / {reference['what']}", "value": ratio,
                           "threshold": FLOOR_OVER_COMPUTE, "at_most": True,
                           "passed": ratio <= FLOOR_OVER_COMPUTE})
    if name == "large":
        for row in rows:
            floors.append({"floor": f"{row['backend']} peak RSS (MiB)",
                           "value": row["peak_rss_mib"], "threshold": FLOOR_LARGE_RSS_MIB,
                           "passed": row["peak_rss_mib"] <= FLOOR_LARGE_RSS_MIB})
    return floors


def workload_text(result: dict, machine: dict) -> str:
    load = machine.get("load_average_at_end")
    load_text = " / ".join(f"{v:.2f}" for v in load) if load else "unknown"
    lines = [f"workload {result['workload']}: {result['rows'][0]['images'] if result['rows'] else 0}"
             f" image(s), sizes {', '.join('x'.join(map(str, s)) for s in result['image_sizes_hxw'])}",
             f"measured on {machine.get('cpu') or 'an unknown CPU'}, {machine.get('cpus')} "
             f"cores (load average at the end, 1 / 5 / 15 min: {load_text})",
             "| backend | total s | peak RSS MiB | exit |", "| --- | --- | --- | --- |"]
    for row in result["rows"]:
        label = row["backend"] + (f" ({row['cache']} cache)" if row.get("cache") else "")
        lines.append(f"| {label} | {row['total_s']:.1f} | {row['peak_rss_mib']:.0f} | "
                     f"{row['exit_code']} |")
    for f in result["floors"]:
        bound = "at most" if f.get("at_most") else "at least"
        lines.append(f"floor {f['floor']}: {f['value']:.2f} ({bound} {f['threshold']}) "
                     f"{'passed' if f['passed'] else 'MISSED'}")
    reference = result.get("reference")
    if reference:
        lines.append(f"compute reference: {reference['what']} = {reference['seconds']:.1f} s "
                     "(JAX, each alone after its compilation, best of 2)")
    for row in result["rows"]:
        if "account" in row:
            from parity.bench.run_profile import account_text

            label = row["backend"] + (f" ({row['cache']} cache)" if row.get("cache") else "")
            ref = reference["seconds"] if reference and row["backend"] == "jax" else None
            lines += [""] + account_text(label, row["account"], ref)
    return "\n".join(lines) + "\n"
