"""`dln bench`: latency of every backend on this machine, against its own matmul peak."""

from __future__ import annotations

from core.errors import UserError

ORDER = 65


def register(sub) -> None:
    p = sub.add_parser(
        "bench", help="per-image latency of jax / torch / torch.compile against the matmul peak",
        description="Measure, in one run, the float32 matmul peak of this machine (best of "
                    "numpy, torch and JAX) and the per-image latency of each backend on the same "
                    "weights (fresh worker process each, timed runs interleaved), with GFLOP/s, "
                    "fraction of the peak, and peak memory of one inference. A figure above the "
                    "peak is flagged as a measurement error.")
    p.add_argument("--size", default="400x600", help="HEIGHTxWIDTH of the input (default 400x600)")
    p.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--backends", default="jax,torch,torch-compile",
                   help="comma-separated: jax, torch, torch-compile (default all three)")
    p.add_argument("--weights", default=None,
                   help=".pth or .safetensors (default: the bundled weights/sample/dln_sample.pth)")
    p.add_argument("--repeats", type=int, default=7, help="timed runs per backend (default 7)")
    p.add_argument("--peak-size", type=int, default=4096,
                   help="N of the N x N matmuls that measure the peak (default 4096)")
    p.add_argument("--torch-nchw", action="store_true",
                   help="run PyTorch in NCHW instead of channels_last (measured faster here)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment variable for every worker (repeatable), e.g. "
                        "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432")
    p.add_argument("--jax-plain", action="store_true",
                   help="time the port without the 1x1-as-matrix-product rewrite "
                        "(make_apply(pointwise_as_dot=False))")
    p.add_argument("--profile", action="store_true",
                   help="after timing, trace the JAX forward: time per layer and per kind of op")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="also write bench.json, bench.md and bench_latency.png here")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when a floor of the issue is missed or a figure exceeds the peak")
    p.set_defaults(run=run)


def run(args) -> int:
    import json
    from pathlib import Path

    from parity.bench.benchmark import BenchOptions, parse_backends, parse_size, run_bench
    from parity.bench.report import summary_text, write_report

    size = parse_size(args.size)
    backends = parse_backends(args.backends)
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--env must look like KEY=VALUE, got {item!r}")
        env[key.strip()] = value
    for flag, value, least in (("--batch", args.batch, 1), ("--repeats", args.repeats, 1),
                               ("--peak-size", args.peak_size, 16)):
        if value < least:
            raise UserError(f"{flag} must be >= {least}, got {value}")
    from core.paths import SAMPLE_CHECKPOINT

    weights = args.weights or str(SAMPLE_CHECKPOINT)
    if not Path(weights).is_file():
        raise UserError(f"--weights {weights}: no such file")
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
            print("wrote " + ", ".join(str(p) for p in paths.values()))
    if args.strict:
        missed = [f for f in result["floors"] if not f["passed"]]
        flagged = [n for n, f in result["backends"].items() if f.get("exceeds_peak")]
        return 1 if missed or flagged else 0
    return 0
