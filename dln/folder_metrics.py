"""The authors' evaluation of two folders of images matched by name (`dln metrics`).

Every pair of files with one name (suffix aside) in the prediction and the
ground-truth folders is scored with core.evaluation's protocol (uint8 RGB, PSNR at
data range 255, scikit-image's default SSIM averaged over channels, theta); the
means are of the per-image values. Names are printed escaped (core.text): a name
with a newline or bytes that are not UTF-8 is one row of the table, never two.
"""

from __future__ import annotations

import dataclasses
import json
import math

from core.errors import UserError
from core.text import escape_text

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
        rows = self.images + [dict(name="mean", **self.mean)]
        names = [escape_text(row["name"]) for row in rows]
        width = max(5, *(len(n) for n in names))
        lines = [f"{'image':<{width}}  {'PSNR':>9}  {'SSIM':>8}  {'theta':>8}"]
        for name, row in zip(names, rows):
            lines.append(f"{name:<{width}}  {row['psnr']:9.4f}  {row['ssim']:8.5f}  "
                         f"{row['theta']:8.4f}")
        return "\n".join(lines)


def evaluate_folders(pred_dir, gt_dir) -> FolderEvaluation:
    """The authors' evaluation of every pair of images with one name in both folders."""
    from core.evaluation import evaluate_pair
    from core.image_pairs import load_uint8, match_by_name
    from core.progress import progress

    matched = match_by_name(pred_dir, gt_dir)
    images = []
    for name, pred_path, gt_path in progress(matched.pairs, desc="metrics", unit="image"):
        pred, gt = load_uint8(pred_path), load_uint8(gt_path)
        shown = escape_text(name)
        if pred.shape != gt.shape:
            raise UserError(f"{shown}: prediction {pred.shape[0]}x{pred.shape[1]} and ground "
                            f"truth {gt.shape[0]}x{gt.shape[1]} (HxW) differ in size")
        if min(pred.shape[:2]) < 7:
            raise UserError(f"{shown}: SSIM's 7x7 window needs images of at least 7x7 pixels")
        images.append(dict(name=name, **evaluate_pair(pred, gt)))
    mean = {k: float(sum(r[k] for r in images) / len(images)) for k in METRIC_NAMES}
    return FolderEvaluation(images, mean, matched.only_pred, matched.only_gt)
