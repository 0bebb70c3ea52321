"""`dln synth`: write a LOL-layout folder of synthetic low-light pairs from any images."""

from __future__ import annotations

from core.errors import UserError

ORDER = 35


def register(sub) -> None:
    from dln.arguments import seed

    p = sub.add_parser(
        "synth", help="make synthetic low-light pairs (LOL layout) from a folder of images",
        description="For every image in SOURCE: resize so the shorter side is 384, then darken "
                    "with the authors' recipe (saturation and contrast x U(0.7, 1), then "
                    "beta (alpha v)^gamma). Writes OUT/high/<stem>.png and OUT/low/<stem>.png, "
                    "each pair as a unit (both or neither); each image's draw depends only on "
                    "the seed and its name.")
    p.add_argument("--source", required=True, help="folder of images (png, jpg, jpeg, bmp)")
    p.add_argument("--out", required=True, help="output folder (gets low/ and high/)")
    p.add_argument("--seed", type=seed, default=0,
                   help="darkening seed, 0 to 4,294,967,295 (default 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output pairs (never a source image: an --out whose "
                        "high/ or low/ is the source folder is refused)")
    p.set_defaults(run=run)


def run(args) -> int:
    import sys
    from pathlib import Path

    from core.text import escape_text
    from dln.synth import synthesize_folder

    if not Path(args.source).is_dir():
        raise UserError(f"{args.source}: not a folder")
    result = synthesize_folder(args.source, args.out, args.seed, overwrite=args.overwrite)
    for line in result.problems:
        print(f"dln synth: {escape_text(line)}", file=sys.stderr)
    print(f"wrote {len(result.written)} pair(s) to {escape_text(args.out)}"
          + (f"; {len(result.problems)} problem(s)" if result.problems else ""))
    # exit 1: some images could not be used (each problem is one line on stderr)
    return 1 if result.problems else 0
