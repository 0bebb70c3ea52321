"""`dln parity`: DLN's preset of the parity engine (parity.presets.dln), block by block.

Exit 0 when every block agrees within --tol, 1 when something diverges, 2 on bad input.
The command builds the weights and inputs, calls the preset, prints, and writes the one
report format (parity.engine.report), as `dln check` does for any model.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from core.errors import UserError
from dln.arguments import positive_float, positive_int, seed

ORDER = 30


def register(sub) -> None:
    from parity.engine.tolerance import FORWARD_ATOL
    from parity.presets.dln import DEFAULT_BATCH, DEFAULT_SEED, DEFAULT_SIZE
    from parity.presets.dln_defects import DEFECTS

    p = sub.add_parser(
        "parity", help="compare the Flax port with the PyTorch reference, block by block",
        description="Run the PyTorch reference and the Flax port on the same weights and inputs, "
                    "capture every named block (torch hooks / Flax capture_intermediates), and "
                    "report per block the shape, max abs error, error relative to the block's "
                    "scale and pass/fail, plus the first divergence in execution order. "
                    "Exit 0: all pass; 1: diverges; 2: bad input.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="defects for --inject (JAX side only): " + ", ".join(DEFECTS) +
               "\nexamples:\n"
               "  dln parity --weights DLN_pretrained.pth --size 61x93 --batch 3\n"
               "  dln parity --variant brightness=off,residual_sign=paper,dim=16\n"
               "  dln parity --backend nnx --weights DLN_pretrained.pth\n"
               "  dln parity --inject conv1d-kernel --report out/parity_conv1d")
    p.add_argument("--weights", default=None,
                   help=".pth or .safetensors checkpoint (default: seeded random weights with "
                        "non-zero biases and varied PReLU slopes)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--images", nargs="+", metavar="PATH", default=None,
                        help="image files/folders, one batch, centre-cropped to a common size")
    source.add_argument("--size", default=None, metavar="HxW",
                        help=f"size of seeded random inputs (default "
                             f"{DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]})")
    p.add_argument("--batch", type=positive_int, default=None,
                   help=f"batch size (random inputs: default {DEFAULT_BATCH}; "
                        "--images: the first N images)")
    p.add_argument("--variant", default=None,
                   help="switches, e.g. brightness=off,residual_sign=paper,gamma=0.5 (dim=16 "
                        "for random weights); must agree with what the checkpoint records")
    p.add_argument("--backend", choices=("jax", "nnx"), default="jax",
                   help="the port checked: jax = the Flax Linen port (port/model.py), nnx = "
                        "the Flax NNX port (port/nnx_model.py); the same blocks, weights and "
                        "report (default jax)")
    p.add_argument("--inject", default=None, metavar="DEFECT",
                   help="apply a known porting defect to the JAX side only (see below)")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="write report.json, report.md and per_layer_error.png here")
    p.add_argument("--junit", default=None, metavar="FILE",
                   help="write JUnit XML: one testcase per block")
    p.add_argument("--tol", type=positive_float, default=FORWARD_ATOL,
                   help=f"per-block tolerance relative to max(1, max|torch|) "
                        f"(default {FORWARD_ATOL:g})")
    p.add_argument("--seed", type=seed, default=DEFAULT_SEED,
                   help="seed of random weights and inputs")
    p.add_argument("--list-defects", action="store_true", help="list the bug zoo and exit")
    p.add_argument("--gradients", action="store_true",
                   help="gradient parity instead: d(training loss)/d(every parameter) per tensor "
                        "(float64, limit 1e-6; float32 reported) and one Adam step (limit 1e-6) "
                        "on a random dark batch (--size, default 24x36, >= 11 a side; --batch)")
    p.add_argument("--training", action="store_true",
                   help="training parity instead: train both frameworks --steps steps (Adam, "
                        "lr 1e-5, /10 for the last quarter, batch --batch or 2, 48 x 48 crops of "
                        "textured built-in photos) from the same weights and batches; judged: "
                        "step 1's loss, the first 20 losses, final weights, Adam's moments, "
                        "each tensor's update and all updates together (limits in "
                        "parity/engine/tolerance.py, set for 20 steps); a NaN or infinity "
                        "anywhere fails. With --inject TRAINING_DEFECT the JAX step carries "
                        "that defect (exit 1 expected)")
    p.add_argument("--zoo", action="store_true",
                   help="with --training: the correct JAX trainer and every training defect on "
                        "one shared trajectory against one torch run; exit 0 only if the "
                        "correct one passes and every defect is caught")
    p.add_argument("--steps", type=positive_int, default=20,
                   help="with --training: steps (default 20)")
    p.add_argument("--json", action="store_true",
                   help="print the report JSON to stdout (the table goes to stderr)")
    p.add_argument("--fixture", nargs="?", const="", default=None, metavar="FILE",
                   help="check the Flax port against a DLN fixture (stored PyTorch outputs of "
                        "every block; default: the committed one) without importing PyTorch")
    p.set_defaults(run=run)


def load_weights(args, size: tuple[int, int], batch: int):
    """(Checkpoint, label) from --weights/--variant, or seeded random weights; the memory
    the run needs is checked before random weights are drawn."""
    from core.config import DLNConfig, parse_variant
    from parity.presets.dln import check_memory
    from weights.convert import checkpoint_from_torch_state, load_checkpoint
    from weights.synthetic import random_torch_state

    overrides = parse_variant(args.variant)
    if args.weights:
        ckpt = load_checkpoint(args.weights, overrides)
        if not args.images:
            check_memory(ckpt.config, batch, *size)
        return ckpt, args.weights
    config = DLNConfig(**overrides)
    if not args.images:
        check_memory(config, batch, *size)
    state = random_torch_state(config, seed=args.seed)
    return checkpoint_from_torch_state(state, config), f"seeded random weights (seed {args.seed})"


def _list_defects() -> int:
    from parity.grads.training_zoo import DEFECTS as TRAINING_DEFECTS
    from parity.presets.dln_defects import DEFECTS

    width = max(map(len, [*DEFECTS, *TRAINING_DEFECTS]))
    for name, defect in DEFECTS.items():
        print(f"{name:<{width}}  {defect.summary}")
    print("training defects (--training --inject NAME, or all with --training --zoo):")
    for name, defect in TRAINING_DEFECTS.items():
        print(f"{name:<{width}}  {defect.summary}")
    return 0


def run(args) -> int:
    from pathlib import Path

    from core.images import parse_image_size
    from parity.presets import dln
    from parity.presets.dln_defects import DEFECTS

    args.started = time.perf_counter()
    if args.list_defects:
        return _list_defects()
    if args.training:
        from parity.grads.training_zoo import DEFECTS as TRAINING_DEFECTS

        if args.inject is not None and args.inject not in TRAINING_DEFECTS:
            raise UserError(f"unknown training defect {args.inject!r} (known: "
                            f"{', '.join(TRAINING_DEFECTS)})")
        if args.zoo and args.inject:
            raise UserError("--zoo runs every training defect; drop --inject")
    elif args.zoo:
        raise UserError("--zoo is the training zoo: give --training too")
    elif args.inject is not None and args.inject not in DEFECTS:
        raise UserError(f"unknown defect {args.inject!r} (known: {', '.join(DEFECTS)})")
    if args.report and Path(args.report).exists() and not Path(args.report).is_dir():
        raise UserError(f"--report {args.report}: exists and is not a folder")
    if args.fixture is not None:
        if args.weights or args.images or args.size or args.gradients or args.training:
            raise UserError("--fixture takes its weights and inputs from the fixture; drop "
                            "--weights/--images/--size/--gradients/--training")
        return _finish(args, dln.run_fixture(args.fixture or None, tol=args.tol,
                                             defect=args.inject, backend=args.backend))
    if (args.gradients or args.training) and args.backend != "jax":
        raise UserError("--gradients and --training check the Linen port (the NNX port's "
                        "gradients: dln check --gradients with an NNX factory; its training: "
                        "dln train --framework nnx)")
    if (args.gradients or args.training) and args.images or args.gradients and args.inject:
        raise UserError("--gradients and --training take --weights/--variant/--size/--batch, "
                        "not --images (nor --gradients --inject)")
    size = parse_image_size(args.size) if args.size else \
        (dln.GRADIENT_SIZE if args.gradients else dln.DEFAULT_SIZE)
    batch = args.batch or dln.DEFAULT_BATCH
    ckpt, label = load_weights(args, (48, 48) if args.training else size, batch)
    if args.training:
        return _run_training(args, ckpt, label)
    if args.gradients:
        return _run_gradients(args, ckpt, label, size, batch)
    inputs = dln.image_inputs(args.images, args.batch, ckpt.config) if args.images else \
        dln.random_inputs(size, batch, args.seed)
    return _finish(args, dln.run_parity(ckpt, inputs, tol=args.tol, defect=args.inject,
                                        weights_label=label, backend=args.backend))


def _finish(args, result) -> int:
    """Print the result (stderr with --json), write the reports; the exit code."""
    import json
    import sys

    from parity.engine.report import report_dict, write_junit, write_report
    from core.text import escape_text
    from parity.engine.rows import format_table, verdict_line

    out = sys.stderr if args.json else sys.stdout
    details = result.details
    config = details.get("config")
    if config is not None:
        print(f"weights: {escape_text(details['weights'])}; dim {config['dim']}, "
              f"brightness={'on' if config['brightness'] else 'off'}, gamma={config['gamma']:g}, "
              f"residual_sign={config['residual_sign']}", file=out)
    if details.get("port"):
        print(f"port: {details['port']}", file=out)
    inputs = details.get("inputs")
    if inputs:
        print(f"inputs: {escape_text(inputs.get('description', inputs))}", file=out)
    if details.get("defect"):
        print(f"injected into JAX only: {details['defect']['name']}: "
              f"{details['defect']['summary']}", file=out)
    for note in result.notes:
        print(f"note: {escape_text(note)}", file=out)
    if result.report is not None:
        print("\n".join(format_table(result.report)), file=out)
        print(verdict_line(result.report), file=out)
    if result.gradients is not None:
        print("\n".join(result.gradients.summary_lines()), file=out)
    print(f"time: {time.perf_counter() - args.started:.1f} s", file=out)
    if args.report:
        print("report: " + ", ".join(str(p) for p in write_report(result, args.report)),
              file=out)
    if args.junit:
        print(f"junit: {write_junit(result, args.junit)}", file=out)
    if args.json:
        print(json.dumps(report_dict(result), indent=2))
    return 0 if result.passed else 1


def _run_training(args, ckpt, label) -> int:
    from parity.grads.training_parity import training_parity, training_zoo

    print(f"weights: {label}; {ckpt.config.variant_string()}, dim {ckpt.config.dim}")
    if args.zoo:
        zoo = training_zoo(ckpt.config, steps=args.steps, batch=args.batch or 2,
                           seed=args.seed, initial=ckpt.flax_params)
        print(zoo.correct.text())
        print("\n".join(zoo.table()))
        print(zoo.summary())
        if args.report:
            paths = zoo.write_report(args.report)
            print("report: " + ", ".join(str(p) for p in paths))
        return 0 if zoo.passed else 1
    result = training_parity(ckpt.config, steps=args.steps, batch=args.batch or 2,
                             seed=args.seed, initial=ckpt.flax_params, defect=args.inject)
    print(result.text())
    if args.report:
        paths = result.write_report(args.report)
        print("report: " + ", ".join(str(p) for p in paths))
    return 0 if result.passed else 1


def _run_gradients(args, ckpt, label, size, batch) -> int:
    from parity.engine.report import CheckResult
    from parity.presets import dln

    if min(size) < 11:
        raise UserError("--gradients needs at least 11x11 pixels (the authors' SSIM window)")
    x, target = dln.gradient_batch(size, batch, args.seed)
    description = f"{batch} seeded dark image(s) {size[0]}x{size[1]} and brighter targets"
    details = {"config": dataclasses.asdict(ckpt.config), "weights": label,
               "inputs": {"shape": list(x.shape), "layout": "NCHW", "description": description}}
    return _finish(args, CheckResult("DLN gradient parity: PyTorch vs Flax", details,
                                     gradients=dln.run_gradients(ckpt, x, target)))
