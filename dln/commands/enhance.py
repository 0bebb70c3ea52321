"""`dln enhance`: enhance images with a checkpoint, on JAX (default) or PyTorch."""

from __future__ import annotations

import sys

from dln.config import parse_variant
from dln.images import DEFAULT_MAX_PIXELS

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
    p.add_argument("--overwrite", action="store_true", help="replace existing output PNGs")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger images up front (default {DEFAULT_MAX_PIXELS:,})")
    p.set_defaults(run=run)


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
    return 0 if result.ok else 1
