"""`dln demo`: the README's main job on the embedded sample checkpoint and images."""

from __future__ import annotations

from core.paths import SAMPLE_CHECKPOINT, SAMPLE_IMAGES

ORDER = 90


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="convert the sample checkpoint and enhance the bundled low-light images",
        description="Convert the project's sample .pth to safetensors, enhance the bundled "
                    "low-light samples with the JAX port, and write a comparison grid.")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--weights", default=str(SAMPLE_CHECKPOINT), help="source .pth")
    p.add_argument("--samples", default=str(SAMPLE_IMAGES),
                   help="LOL-layout folder with low/ and high/ (default: bundled samples)")
    p.set_defaults(run=run)


def run(args) -> int:
    from dln.demo import run_demo

    summary = run_demo(args.weights, args.samples, args.out)
    print(summary.text())
    return 0 if summary.ok else 1
