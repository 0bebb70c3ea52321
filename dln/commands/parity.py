"""`dln parity`: PyTorch reference vs Flax port, block by block; optional bug-zoo defect.

Exit 0 when every block agrees within --tol, 1 when something diverges, 2 on bad input.
The command is a thin layer over parity.engine.harness / parity.engine.report: it builds the weights
and inputs, runs, prints, writes. New modes (e.g. a training comparison) add their
flags in `register` and a branch at the top of `run`, reusing `load_weights`.
"""

from __future__ import annotations

from core.errors import UserError

import argparse

from core.config import parse_variant

ORDER = 30


def register(sub) -> None:
    from parity.engine.harness import DEFAULT_BATCH, DEFAULT_SEED, DEFAULT_SIZE
    from parity.engine.tolerance import FORWARD_ATOL
    from parity.zoo.defects import defect_names

    p = sub.add_parser(
        "parity", help="compare the Flax port with the PyTorch reference, block by block",
        description="Run the PyTorch reference and the Flax port on the same weights and inputs, "
                    "capture every named block (torch hooks / Flax capture_intermediates), and "
                    "report per block the shape, max abs error, error relative to the block's "
                    "scale and pass/fail, plus the first divergence in execution order. "
                    "Exit 0: all pass; 1: diverges; 2: bad input.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="defects for --inject (JAX side only): " + ", ".join(defect_names()) +
               "\nexamples:\n"
               "  dln parity --weights DLN_pretrained.pth --size 61x93 --batch 3\n"
               "  dln parity --variant brightness=off,residual_sign=paper,dim=16\n"
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
    p.add_argument("--batch", type=int, default=None,
                   help=f"batch size (random inputs: default {DEFAULT_BATCH}; "
                        "--images: the first N images)")
    p.add_argument("--variant", default=None,
                   help="switches, e.g. brightness=off,residual_sign=paper,gamma=0.5 (dim=16 "
                        "for random weights); must agree with what the checkpoint records")
    p.add_argument("--inject", default=None, metavar="DEFECT",
                   help="apply a known porting defect to the JAX side only (see below)")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="write report.json, report.md and per_layer_error.png here")
    p.add_argument("--tol", type=float, default=FORWARD_ATOL,
                   help=f"per-block tolerance relative to max(1, max|torch|) "
                        f"(default {FORWARD_ATOL:g})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
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
    p.add_argument("--steps", type=int, default=20, help="with --training: steps (default 20)")
    p.add_argument("--json", action="store_true",
                   help="print the report JSON to stdout (the table goes to stderr)")
    p.add_argument("--fixture", nargs="?", const="", default=None, metavar="DIR",
                   help="check the Flax port against the committed regression fixture (stored "
                        "PyTorch outputs of every block; default tests/fixtures) without "
                        "running PyTorch")
    p.set_defaults(run=run)


def load_weights(args):
    """(Checkpoint, label) from --weights/--variant, or seeded random weights."""
    from core.config import DLNConfig
    from weights.convert import checkpoint_from_torch_state, load_checkpoint
    from weights.synthetic import random_torch_state

    overrides = parse_variant(args.variant)
    if args.weights:
        ckpt = load_checkpoint(args.weights, overrides)
        return ckpt, args.weights
    config = DLNConfig(**overrides)
    state = random_torch_state(config, seed=args.seed)
    return checkpoint_from_torch_state(state, config), f"seeded random weights (seed {args.seed})"


def _inputs(args, config):
    from core.images import parse_image_size
    from parity.engine.harness import (DEFAULT_BATCH, DEFAULT_SIZE, check_memory, image_inputs,
                                       random_inputs)

    if args.images:
        return image_inputs(args.images, args.batch)
    size = parse_image_size(args.size) if args.size else DEFAULT_SIZE
    batch = DEFAULT_BATCH if args.batch is None else args.batch
    check_memory((batch, *size), config)  # before allocating the inputs
    return random_inputs(size, batch, args.seed)


def _list_defects() -> int:
    from parity.grads.training_zoo import DEFECTS as TRAINING_DEFECTS
    from parity.zoo.defects import DEFECTS

    width = max(map(len, [*DEFECTS, *TRAINING_DEFECTS]))
    for name, defect in DEFECTS.items():
        print(f"{name:<{width}}  {defect.summary}")
    print("training defects (--training --inject NAME, or all with --training --zoo):")
    for name, defect in TRAINING_DEFECTS.items():
        print(f"{name:<{width}}  {defect.summary}")
    return 0


def run(args) -> int:
    from pathlib import Path

    from parity.zoo.defects import DEFECTS

    if args.list_defects:
        return _list_defects()
    if not args.tol > 0:
        raise UserError(f"--tol must be positive, got {args.tol}")
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
        return _run_fixture(args)
    ckpt, label = load_weights(args)
    if args.training:
        return _run_training(args, ckpt, label)
    if args.gradients:
        return _run_gradients(args, ckpt, label)
    return _run_forward(args, ckpt, label)


def _run_forward(args, ckpt, label) -> int:
    from parity.engine.harness import run_parity

    inputs = _inputs(args, ckpt.config)
    run_result = run_parity(ckpt, inputs, tol=args.tol, defect=args.inject, weights_label=label)
    return _print_and_write(args, run_result, ckpt, label, inputs.description)


def _print_and_write(args, run_result, ckpt, label, description) -> int:
    import json
    import sys

    from parity.engine.block_compare import escape_text, format_table, verdict_line
    from parity.engine.report import report_dict, write_report

    out = sys.stderr if args.json else sys.stdout
    print(f"weights: {escape_text(label)}; {ckpt.config.variant_string()}, dim {ckpt.config.dim}",
          file=out)
    print(f"inputs: {escape_text(description)}", file=out)
    if args.inject:
        print(f"injected into JAX only: {args.inject}: {run_result.defect_summary}", file=out)
    for note in run_result.notes:
        print(f"note: {escape_text(note)}", file=out)
    print("\n".join(format_table(run_result.layers)), file=out)
    print(verdict_line(run_result.layers), file=out)
    if run_result.seconds.get("total"):
        print(f"time: torch {run_result.seconds['torch']:.1f} s, "
              f"JAX {run_result.seconds['jax']:.1f} s", file=out)
    if args.report:
        try:
            paths = write_report(run_result, args.report)
        except OSError as err:
            raise UserError(f"--report {args.report}: cannot write ({err.strerror or err})") \
                from None
        print("report: " + ", ".join(str(p) for p in paths), file=out)
    if args.json:
        print(json.dumps(report_dict(run_result), indent=2))
    return 0 if run_result.passed else 1


def _run_fixture(args) -> int:
    """The port against the stored reference outputs (no PyTorch run)."""
    from pathlib import Path

    from parity.engine.fixture import DEFAULT_DIR, run_fixture_check

    if args.weights or args.images or args.size or args.gradients or args.training:
        raise UserError("--fixture takes its weights and inputs from the fixture; drop "
                        "--weights/--images/--size/--gradients/--training")
    folder = Path(args.fixture) if args.fixture else DEFAULT_DIR
    run_result, ckpt = run_fixture_check(folder, tol=args.tol, defect=args.inject)
    return _print_and_write(args, run_result, ckpt, run_result.weights,
                            run_result.inputs.description)


def _run_training(args, ckpt, label) -> int:
    from parity.grads.training_parity import training_parity, training_zoo

    if args.steps < 1 or (args.batch is not None and args.batch < 1):
        raise UserError("--steps and --batch must be at least 1")
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


def _run_gradients(args, ckpt, label) -> int:
    from parity.grads.gradients import gradient_batch, gradient_parity
    from core.images import parse_image_size
    from parity.engine.report import write_gradient_report

    if args.inject or args.images:
        raise UserError("--gradients takes --weights/--variant/--size/--batch, not "
                        "--inject or --images")
    size = parse_image_size(args.size) if args.size else (24, 36)
    batch = 2 if args.batch is None else args.batch
    if min(size) < 11 or batch < 1:
        raise UserError("--gradients needs at least 11x11 pixels (the authors' SSIM window) "
                        "and --batch >= 1")
    x, target = gradient_batch(size, batch, args.seed)
    print(f"weights: {label}; {ckpt.config.variant_string()}, dim {ckpt.config.dim}")
    print(f"batch: {batch} seeded dark image(s) {size[0]}x{size[1]} and brighter targets")
    report = gradient_parity(ckpt, x, target)
    print("\n".join(report.summary_lines()))
    if args.report:
        paths = write_gradient_report(report, args.report)
        print("report: " + ", ".join(str(p) for p in paths))
    return 0 if report.passed else 1
