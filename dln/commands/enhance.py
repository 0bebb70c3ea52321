"""`dln enhance`: enhance images with a checkpoint, on JAX (default) or PyTorch."""

from __future__ import annotations

import sys

from core.config import parse_variant
from core.images import DEFAULT_MAX_PIXELS

ORDER = 20


def register(sub) -> None:
    p = sub.add_parser(
        "enhance", help="enhance low-light images into PNGs",
        description="Enhance images (png, jpg, jpeg, bmp; files and/or folders) and write "
                    "OUTPUT/<stem>.png quantised the authors' way (x255, clip, truncate).")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    p.add_argument("--weights", required=True, help=".pth or .safetensors checkpoint")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--backend", choices=("jax", "torch"), default="jax")
    p.add_argument("--gamma", type=float, default=None,
                   help="enhancement strength: pred = x + gamma * P(x) (default: the checkpoint's)")
    p.add_argument("--variant", default=None, help="switches the checkpoint cannot tell")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output PNGs (without it each one is refused with a "
                        "line, the others are written, and the exit code is 1)")
    p.add_argument("--max-pixels", type=_positive_int, default=None,
                   help="refuse larger images from their header, before decoding (default: "
                        f"{DEFAULT_MAX_PIXELS:,}, or fewer if that would not fit in 80%% of "
                        "the memory available)")
    p.set_defaults(run=run)


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run(args) -> int:
    from dln.enhance import enhance_paths
    from weights.convert import load_checkpoint

    overrides = parse_variant(args.variant)
    if args.gamma is not None:
        overrides["gamma"] = args.gamma
        parse_variant(f"gamma={args.gamma}")  # validate
    ckpt = load_checkpoint(args.weights, overrides)
    for note in ckpt.notes:
        print(f"note: {note}", file=sys.stderr)
    result = enhance_paths(ckpt, args.inputs, args.output, backend=args.backend,
                           overwrite=args.overwrite, max_pixels=args.max_pixels)
    for line in result.failures:
        print(f"dln enhance: {line}", file=sys.stderr)
    print(f"wrote {len(result.written)} image(s) to {args.output} with {args.backend}"
          + (f"; {len(result.failures)} problem(s)" if result.failures else ""))
    # 0: all written; 1: some inputs refused or unreadable (each named above);
    # 2 (from the CLI): nothing could start (bad checkpoint, bad options).
    return 0 if result.ok else 1
