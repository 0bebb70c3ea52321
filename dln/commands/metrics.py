"""`dln metrics`: PSNR, SSIM and theta of enhanced images against ground truth, with the
authors' protocol (core/evaluation.py); `--compare-libraries` prints the honest Table 1."""

from __future__ import annotations

from core.errors import UserError

import dataclasses
import json
import math
import sys

ORDER = 40

METRIC_NAMES = ("psnr", "ssim", "theta")


@dataclasses.dataclass(frozen=True)
class FolderEvaluation:
    images: list[dict]          # {"name", "psnr", "ssim", "theta"} per pair
    mean: dict[str, float]      # mean of the per-image values
    only_pred: list[str]
    only_gt: list[str]

    def to_json(self) -> str:
        finite = lambda v: v if isinstance(v, str) or math.isfinite(v) else None  # noqa: E731
        return json.dumps({
            "protocol": "uint8 RGB, data range 255; PSNR; SSIM = scikit-image defaults "
                        "(uniform 7x7, sample covariance) averaged over channels; theta = mean "
                        "XYZ angle in degrees; means of per-image values",
            "images": [{k: finite(v) for k, v in row.items()} for row in self.images],
            "mean": {k: finite(v) for k, v in self.mean.items()},
            "unmatched_predictions": self.only_pred, "unmatched_ground_truth": self.only_gt,
        }, indent=2)

    def to_table(self) -> str:
        width = max(5, *(len(r["name"]) for r in self.images))
        lines = [f"{'image':<{width}}  {'PSNR':>9}  {'SSIM':>8}  {'theta':>8}"]
        for row in self.images + [dict(name="mean", **self.mean)]:
            lines.append(f"{row['name']:<{width}}  {row['psnr']:9.4f}  {row['ssim']:8.5f}  "
                         f"{row['theta']:8.4f}")
        return "\n".join(lines)


def evaluate_folders(pred_dir, gt_dir) -> FolderEvaluation:
    """The authors' evaluation of every pair of images with one name in both folders."""
    from core.image_pairs import load_uint8, match_by_name
    from core.progress import progress
    from core.evaluation import evaluate_pair

    matched = match_by_name(pred_dir, gt_dir)
    images = []
    for name, pred_path, gt_path in progress(matched.pairs, desc="metrics", unit="image"):
        pred, gt = load_uint8(pred_path), load_uint8(gt_path)
        if pred.shape != gt.shape:
            raise UserError(f"{name}: prediction {pred.shape[0]}x{pred.shape[1]} and ground "
                            f"truth {gt.shape[0]}x{gt.shape[1]} (HxW) differ in size")
        if min(pred.shape[:2]) < 7:
            raise UserError(f"{name}: SSIM's 7x7 window needs images of at least 7x7 pixels")
        images.append(dict(name=name, **evaluate_pair(pred, gt)))
    mean = {k: float(sum(r[k] for r in images) / len(images)) for k in METRIC_NAMES}
    return FolderEvaluation(images, mean, matched.only_pred, matched.only_gt)


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
    rows = library_compare.compare_folders(pred_dir, gt_dir)
    print(library_compare.to_json(rows) if args.json else library_compare.to_markdown(rows))
    if args.out:
        for path in library_compare.write_report(rows, args.out):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def run(args) -> int:

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
            print(f"note: {len(names)} {label} skipped: {', '.join(names[:5])}"
                  + (" ..." if len(names) > 5 else ""), file=sys.stderr)
    print(result.to_json() if args.json else result.to_table())
    return 0
