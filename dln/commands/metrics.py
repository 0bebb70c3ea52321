"""`dln metrics`: PSNR, SSIM and theta of enhanced images against ground truth, with the
authors' protocol (core/evaluation.py); `--compare-libraries` prints the honest Table 1."""

from __future__ import annotations

import sys

from core.errors import UserError
from core.text import escape_text

ORDER = 40
TABLE1_FILES = ("table1.md", "table1.json", "table1.png")  # what --out receives


def register(sub) -> None:
    p = sub.add_parser(
        "metrics", help="PSNR, SSIM, theta of two folders; or the honest library Table 1",
        description="Compare enhanced images (--pred) with ground truth (--gt), matched by file "
                    "name, with the authors' protocol: uint8 RGB, PSNR at data range 255, "
                    "scikit-image's default SSIM (7x7 uniform, sample covariance) averaged over "
                    "channels, theta = mean colour angle after RGB->XYZ, in degrees. With "
                    "--compare-libraries: scikit-image vs PIX under each library's defaults "
                    "and under matched settings (default folders: the bundled samples/low vs "
                    "samples/high).")
    p.add_argument("--pred", help="folder of enhanced images")
    p.add_argument("--gt", help="folder of ground-truth images with the same names")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--compare-libraries", action="store_true",
                   help="print scikit-image vs PIX under defaults and matched settings")
    p.add_argument("--out", help="with --compare-libraries: also write table1.md/.json/.png here")
    p.set_defaults(run=run)


def _run_compare(args) -> int:
    from core.paths import SAMPLE_IMAGES
    from parity.evaluation import library_compare

    if (args.pred is None) != (args.gt is None):
        raise UserError("--compare-libraries takes both --pred and --gt, or neither "
                        "(then the bundled samples/low vs samples/high)")
    pred_dir = args.pred if args.pred is not None else SAMPLE_IMAGES / "low"
    gt_dir = args.gt if args.gt is not None else SAMPLE_IMAGES / "high"
    if args.out:  # a report file that is one of the images compared: refused before reading
        _refuse_outputs_among_inputs(pred_dir, gt_dir, args.out)
    rows = library_compare.compare_folders(pred_dir, gt_dir)
    print(library_compare.to_json(rows) if args.json else library_compare.to_markdown(rows))
    if args.out:
        for path in library_compare.write_report(rows, args.out):
            print(f"wrote {escape_text(path)}", file=sys.stderr)
    return 0


def _refuse_outputs_among_inputs(pred_dir, gt_dir, out) -> None:
    from pathlib import Path

    from core.images import list_images
    from core.run_outputs import OutputPlan

    plan = OutputPlan(list_images([pred_dir, gt_dir])[0])
    plan.claim_all(Path(out) / name for name in TABLE1_FILES)


def run(args) -> int:
    from dln.folder_metrics import evaluate_folders

    if args.compare_libraries:
        return _run_compare(args)
    if args.out:
        raise UserError("--out goes with --compare-libraries")
    if args.pred is None or args.gt is None:
        raise UserError("give --pred DIR and --gt DIR (or --compare-libraries)")
    result = evaluate_folders(args.pred, args.gt)
    for label, names in (("predictions without ground truth", result.only_pred),
                         ("ground truth without predictions", result.only_gt)):
        if names:
            shown = ", ".join(escape_text(n) for n in names[:5])
            print(f"note: {len(names)} {label} skipped: {shown}"
                  + (" ..." if len(names) > 5 else ""), file=sys.stderr)
    print(result.to_json() if args.json else result.to_table())
    return 0
