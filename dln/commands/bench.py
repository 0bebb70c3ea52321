"""`dln bench`: latency of every backend on this machine, against its own matmul peak."""

from __future__ import annotations

from core.errors import UserError
from core.recipe import AUTHORS_RECIPE as _RECIPE
from dln.arguments import int_range
from dln.training_settings import MAX_BATCH, MAX_PATCH

ORDER = 65
MAX_REPEATS = 1000        # timed runs per backend: 1000 x a 400x600 image is already hours
MAX_PEAK_SIZE = 16384     # a 16384^2 float32 matmul holds 3 GiB of operands


def register(sub) -> None:
    p = sub.add_parser(
        "bench", help="per-image latency of jax / nnx / torch / torch.compile against the "
                      "matmul peak",
        description="Measure, in one run, the float32 matmul peak of this machine (best of "
                    "numpy, torch and JAX) and the per-image latency of each backend on the same "
                    "weights (fresh worker process each, timed runs interleaved), with GFLOP/s, "
                    "fraction of the peak, and peak memory of one inference. A figure above the "
                    "peak is flagged as a measurement error.")
    p.add_argument("--size", default="400x600", help="HEIGHTxWIDTH of the input (default 400x600)")
    p.add_argument("--batch", type=int_range(1, MAX_BATCH), default=None,
                   help="images per forward pass (default 1); with --workload train, crops "
                        f"per training step (default the recipe's, {_RECIPE.batch})")
    p.add_argument("--patch", type=int_range(11, MAX_PATCH), default=None,
                   help="with --workload train: side of the square crops (default the "
                        f"recipe's, {_RECIPE.patch}); the training floors are defined at "
                        "--batch 4 --patch 96")
    p.add_argument("--backends", "--backend", dest="backends", default=None,
                   help="comma-separated: jax (the Flax Linen port), nnx (the Flax NNX port), "
                        "torch, torch-compile (default jax,torch,torch-compile); with "
                        "--workload folder|large: jax, torch, torch-tuned-glibc, torch-compile "
                        "(default all four) and jax-one-device (JAX with --cpu-split off); "
                        "with --workload train: jax, jax-plain, torch, torch-compile (default "
                        "jax,torch,torch-compile)")
    p.add_argument("--workload", choices=("folder", "large", "train"), default=None,
                   help="end-to-end `dln enhance` runs instead of per-image latency, one fresh "
                        "process per row, with peak RSS: folder = 12 seeded low-light images "
                        "of mixed sizes from 240x320 to 1024x768 (JAX with a cold, then a warm "
                        "compilation cache); large = one 12-megapixel photo, tiled. Rows: jax, "
                        "torch (eager), torch with the tuned glibc allocator, torch-compile. "
                        "train = seconds per full training step (loss, gradients, Adam) of "
                        "each trainer, warm-up excluded, interleaved rounds, against the "
                        "matmul peak (backends jax, torch, torch-compile, and jax-plain: "
                        "the JAX step without its training rewrites)")
    p.add_argument("--weights", default=None,
                   help=".pth or .safetensors (default: the bundled weights/sample/dln_sample.pth)")
    p.add_argument("--repeats", type=int_range(1, MAX_REPEATS), default=None,
                   help="timed runs per backend (default 7; 5 training steps with "
                        "--workload train)")
    p.add_argument("--peak-size", type=int_range(16, MAX_PEAK_SIZE), default=4096,
                   help="N of the N x N matmuls that measure the peak (default 4096)")
    p.add_argument("--torch-nchw", action="store_true",
                   help="run PyTorch in NCHW instead of channels_last (channels_last measured "
                        "2.8 s against 4.1 s per 400x600 image on a 2-core Xeon; check on "
                        "your machine)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment variable for every worker (repeatable), e.g. "
                        "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432")
    p.add_argument("--jax-plain", action="store_true",
                   help="time the port without the 1x1-as-matrix-product rewrite "
                        "(make_apply(pointwise_as_dot=False)); with --workload train: add a "
                        "row for the JAX step without its training rewrites (jax-plain)")
    p.add_argument("--profile", action="store_true",
                   help="after timing, trace the JAX forward: time per layer and per kind of "
                        "op. With --workload folder|large: account for every second of each run "
                        "(start-up, checkpoint, planning, decoding, tracing, compiling, compute "
                        "per bucket, transfer, encoding, writing) and measure the compute it "
                        "should cost (folder: the sum of each image's per-image forward; "
                        "large: its tiles at the per-image rate). With --workload train: the "
                        "JAX training step's op time per kind of work")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="also write bench.json, bench.md and bench_latency.png here "
                        "(with --workload: workload_NAME.json, .md, .png)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when a floor is missed (JAX >= 1.5x PyTorch eager, >= 1.0x "
                        "torch.compile, >= 50%% of the peak; NNX at most 1.05x JAX's time; "
                        "--workload train: >= 1.2x, >= 1.0x, >= 50%%) or a figure exceeds "
                        "the peak")
    p.set_defaults(run=run)


def run(args) -> int:
    import json
    from pathlib import Path

    from core.images import parse_image_size
    from parity.bench.benchmark import BenchOptions, parse_backends, run_bench
    from parity.bench.report import summary_text, write_report

    if args.workload == "train":
        return _run_train(args)
    if args.patch is not None:
        raise UserError("--patch is for --workload train")
    if args.workload:
        return _run_workload(args)
    args.batch = 1 if args.batch is None else args.batch
    args.repeats = 7 if args.repeats is None else args.repeats
    size = parse_image_size(args.size)
    backends = parse_backends(args.backends or "jax,torch,torch-compile")
    env = _env(args)
    for flag, value, least in (("--batch", args.batch, 1), ("--repeats", args.repeats, 1),
                               ("--peak-size", args.peak_size, 16)):
        if value < least:
            raise UserError(f"{flag} must be >= {least}, got {value}")
    from core.paths import SAMPLE_CHECKPOINT

    weights = args.weights or str(SAMPLE_CHECKPOINT)
    if not Path(weights).is_file():
        raise UserError(f"--weights {weights}: no such file")
    check_bench_memory(weights, size, args.batch, backends)
    opts = BenchOptions(weights=weights, size=size, batch=args.batch, backends=backends,
                        repeats=args.repeats, peak_n=args.peak_size,
                        torch_channels_last=not args.torch_nchw, env=env,
                        jax_fast=not args.jax_plain, profile=args.profile)
    result = run_bench(opts)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(summary_text(result), end="")
    if args.report:
        paths = write_report(result, args.report)
        if not args.json:
            print("wrote " + ", ".join(str(p) for p in paths))
    if args.strict:
        missed = [f for f in result["floors"] if not f["passed"]]
        flagged = [n for n, f in result["backends"].items() if f.get("exceeds_peak")]
        return 1 if missed or flagged else 0
    return 0


def check_bench_memory(weights: str, size: tuple[int, int], batch: int, backends) -> None:
    """Refuse, in one line and before any worker starts, a per-image run whose whole-image
    forward passes (the bench never tiles; its workers, one per backend, live side by
    side for the interleaved rounds) would not fit in MEMORY_FRACTION of the memory
    available now (cgroup limits included): the estimate of `dln enhance --tile off`."""
    from core.memory import MEMORY_FRACTION, WHOLE_IMAGE_BUDGET, available_memory
    from core.units import format_bytes
    from frameworks.memory_plan import plan_image
    from weights.convert import load_checkpoint

    config = load_checkpoint(weights).config
    available = available_memory()
    budget = WHOLE_IMAGE_BUDGET if available is None else int(available * MEMORY_FRACTION)
    need = sum(plan_image(*size, config, "torch" if b.startswith("torch") else b, tile="off",
                          budget=budget).estimate_bytes * batch for b in backends)
    if need > budget:
        raise UserError(f"--size {size[0]}x{size[1]} --batch {batch}: the forward passes of "
                        f"{', '.join(backends)} need about {format_bytes(need)}, more than the "
                        f"{format_bytes(budget)} this run may use; bench a smaller size or "
                        f"fewer backends (dln enhance tiles images this large)")


def _run_workload(args) -> int:
    import json
    from pathlib import Path

    from core.paths import SAMPLE_CHECKPOINT
    from parity.bench.benchmark import machine_description
    from parity.bench.report import write_workload_report
    from parity.bench.workloads import EXTRA_ROWS, ROWS, run_workload, workload_text

    rows = tuple(dict.fromkeys(n.strip() for n in (args.backends or ",".join(ROWS)).split(",")
                               if n.strip()))
    unknown = [r for r in rows if r not in ROWS + EXTRA_ROWS]
    if unknown or not rows:
        raise UserError(f"unknown backend(s) {', '.join(unknown) or '(none)'} for --workload; "
                        f"choose from {', '.join(ROWS + EXTRA_ROWS)}")
    weights = args.weights or str(SAMPLE_CHECKPOINT)
    if not Path(weights).is_file():
        raise UserError(f"--weights {weights}: no such file")
    result = run_workload(args.workload, weights, rows, profile=args.profile)
    result["machine"] = machine_description()
    text = workload_text(result, result["machine"])
    print(json.dumps(result, indent=2) if args.json else text, end="" if not args.json else "\n")
    if args.report:
        paths = write_workload_report(result, text, args.report)
        if not args.json:
            print("wrote " + ", ".join(str(p) for p in paths))
    if args.strict:
        failed = [f for f in result["floors"] if not f["passed"]]
        errors = [r for r in result["rows"] if r["exit_code"] != 0]
        return 1 if failed or errors else 0
    return 0


def _env(args) -> dict:
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--env must look like KEY=VALUE, got {item!r}")
        env[key.strip()] = value
    return env


def _run_train(args) -> int:
    import json
    from pathlib import Path

    from core.paths import SAMPLE_CHECKPOINT
    from parity.bench.train_bench import (TrainBenchOptions, parse_train_backends,
                                          run_train_bench, train_bench_failed)
    from parity.bench.train_report import train_text, write_train_report

    opts = TrainBenchOptions(weights=args.weights or str(SAMPLE_CHECKPOINT),
                             backends=parse_train_backends(args.backends), env=_env(args),
                             profile=args.profile)
    for flag, value, least in (("--batch", args.batch, 1), ("--patch", args.patch, 11),
                               ("--repeats", args.repeats, 1),
                               ("--peak-size", args.peak_size, 16)):
        if value is not None and value < least:
            raise UserError(f"{flag} must be >= {least}, got {value}")
    opts.batch = args.batch or opts.batch
    opts.patch = args.patch or opts.patch
    opts.repeats = args.repeats or opts.repeats
    opts.peak_n = args.peak_size
    if args.jax_plain and "jax-plain" not in opts.backends:
        opts.backends = (*opts.backends, "jax-plain")
    if not Path(opts.weights).is_file():
        raise UserError(f"--weights {opts.weights}: no such file")
    result = run_train_bench(opts)
    print(json.dumps(result, indent=2) if args.json else train_text(result), end="")
    if args.json:
        print()
    if args.report:
        paths = write_train_report(result, args.report)
        if not args.json:
            print("wrote " + ", ".join(str(p) for p in paths))
    return 1 if args.strict and train_bench_failed(result) else 0
