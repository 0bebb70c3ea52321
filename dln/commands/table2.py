"""`dln table2`: the report's Table 2, measured on this machine for any set of models."""

from __future__ import annotations

from core.errors import UserError

ORDER = 60


def register(sub) -> None:
    from dln.arguments import int_range

    p = sub.add_parser(
        "table2", help="parameters, time and quality of models, beside the published Table 2",
        description="For each --model: parameters, model size (bytes on disk as a .pth, a "
                    ".safetensors file and an Orbax checkpoint folder, and bytes of its "
                    "float32 parameters), median synchronised time per image at the "
                    "data's resolution (with GFLOP/s), and PSNR / SSIM / theta means with the "
                    "authors' protocol; printed beside the paper's and the report's published "
                    "rows. Writes table2.md, table2.json and table2_grid.png to --report.")
    p.add_argument("--data", default="builtin",
                   help="a LOL-layout folder (low/ and high/, or eval15/low and eval15/high) or "
                        "'builtin' (the built-in held-out synthetic pairs; default)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=FILE",
                   help="a .pth or .safetensors checkpoint or an Orbax checkpoint folder, named "
                        "in the table (repeatable)")
    p.add_argument("--backend", default="jax",
                   help="comma-separated: jax (the Flax Linen port), nnx (the Flax NNX port), "
                        "torch, e.g. jax,nnx,torch (each model runs on each; default jax)")
    p.add_argument("--repeats", type=int_range(1, 1000), default=5,
                   help="timed runs per model after the warm-up (median reported; default 5)")
    p.add_argument("--column", choices=("voc", "lol"), default=None,
                   help="which published column group the measured metrics go under "
                        "(default: voc for builtin, lol for a folder)")
    p.add_argument("--no-sizes", action="store_true",
                   help="leave the model size column out (measuring it writes each model as a "
                        ".pth, a .safetensors file and an Orbax folder to a temporary folder)")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="write table2.md, table2.json and table2_grid.png here")
    p.set_defaults(run=run)


REPORT_FILES = ("table2.md", "table2.json", "table2_grid.png")  # what --report receives


def _refuse_reports_among_inputs(models, data: str, report: str) -> None:
    """A report file that would replace a checkpoint or an image of the run: one line,
    before anything runs (core.run_outputs)."""
    from pathlib import Path

    from core.images import list_images
    from core.run_outputs import OutputPlan

    inputs = [Path(path) for _, path in models]
    if data != "builtin":
        root = Path(data)
        folders = [root / split / kind for split in ("", "eval15", "test")
                   for kind in ("low", "high")]
        inputs += list_images([f for f in folders if f.is_dir()])[0]
    OutputPlan(inputs).claim_all(Path(report) / name for name in REPORT_FILES)


def run(args) -> int:
    import os
    import sys

    from core.text import escape_text

    if "torch" not in sys.modules:
        # PyTorch's OpenMP threads wait passively at barriers: libgomp's default busy
        # wait collapses when other programs share the cores (see parity.bench.benchmark.worker_env).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from parity.evaluation.table2 import parse_model, run_table2, table_markdown, write_report

    backends = tuple(dict.fromkeys(b.strip() for b in args.backend.split(",") if b.strip()))
    bad = [b for b in backends if b not in ("jax", "nnx", "torch")]
    if bad or not backends:
        raise UserError(f"--backend must be jax, nnx, torch or a comma-separated list of "
                        f"them (e.g. jax,nnx,torch); got {args.backend!r}")
    models = [parse_model(m) for m in args.model]
    if args.report:
        _refuse_reports_among_inputs(models, args.data, args.report)
    result = run_table2(models, args.data, backends, args.repeats, args.column,
                        sizes=not args.no_sizes)
    print(table_markdown(result), end="")
    if args.report:
        paths = write_report(result, args.report)
        print("wrote " + ", ".join(escape_text(p) for p in paths))
    for problem in result.problems:
        print(f"dln table2: {escape_text(problem)}", file=sys.stderr)
    # pairs that could not be read were left out of the means: say so in the exit code
    return 1 if result.problems else 0
