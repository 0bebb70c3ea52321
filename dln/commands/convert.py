"""`dln convert SRC DST`: between .pth, .safetensors and Orbax folders, strict and verified."""

from __future__ import annotations

from core.config import parse_variant

ORDER = 10


def register(sub) -> None:
    p = sub.add_parser(
        "convert", help="convert a checkpoint between .pth, .safetensors and Orbax folders "
                        "(strict, verified)",
        description="Convert the authors' .pth (DataParallel `module.` prefix, plain, or wrapped "
                    "under state_dict/model) to safetensors with Flax names and layouts, to an "
                    "Orbax checkpoint folder (DST.orbax: the Flax NNX state's Params, restorable "
                    "with Orbax into an nnx.eval_shape model), or back. Loads pickles "
                    "weights-only; writes atomically and re-reads bit for bit.")
    p.add_argument("src", help="source .pth/.pt, .safetensors or Orbax checkpoint folder")
    p.add_argument("dst", help="destination .safetensors, .pth or NAME.orbax (a new folder)")
    p.add_argument("--variant", default=None,
                   help="switches the source cannot tell, e.g. residual_sign=paper,gamma=0.5 "
                        "(brightness and dim are read from the shapes)")
    p.add_argument("--dataparallel", action="store_true",
                   help="when writing .pth, prefix keys with `module.` like the authors' files")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing destination (refused otherwise; of folders, only an "
                        "Orbax checkpoint is replaced)")
    p.add_argument("--json", action="store_true", help="print the conversion report as JSON")
    p.set_defaults(run=run)


def run(args) -> int:
    import json

    from core.text import escape_text
    from weights.convert import convert

    report = convert(args.src, args.dst, parse_variant(args.variant), args.dataparallel,
                     overwrite=args.overwrite)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    for note in report.notes:
        print(f"note: {escape_text(note)}")
    print(f"wrote {escape_text(report.destination)}: {report.tensors} tensors, "
          f"{report.parameter_count:,} parameters, dim {report.config.dim}, "
          f"{report.config.variant_string()} (verified bit for bit)")
    return 0
