"""Where the project's embedded defaults live."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CHECKPOINT = REPO_ROOT / "weights" / "sample" / "dln_sample.pth"
SAMPLE_IMAGES = REPO_ROOT / "samples"
