"""`dln check`: any PyTorch model against its Flax port, module by module; mutants; fixtures.

Exit 0: a full comparison in which every compared row passes (and no mutant is missed,
and with --gradients every parameter's gradient agrees); 1: a divergence, a missed
mutant, or a port whose structure fails before numbers (its variables cannot take the
torch weights, nothing pairs: core.errors.PortDiverges); 2: bad input (a factory, shape or file that cannot be used, user code that
fails or exits, a torch module kind the converter has no rule for). The logic is
parity.engine.check; the report format is the one `dln parity` writes.
"""

from __future__ import annotations

import argparse

from core.errors import UserError
from dln.arguments import positive_float, seed

ORDER = 31


def register(sub) -> None:
    from parity.engine.tolerance import FORWARD_ATOL

    p = sub.add_parser(
        "check", help="compare any PyTorch model with its Flax port, module by module",
        description="Run a PyTorch model and its Flax port on the same converted weights and "
                    "seeded inputs, capture every module on both sides (torch forward hooks; "
                    "NNX: each module's __call__, Linen: capture_intermediates), pair them by "
                    "name (torch a.b.0 <-> NNX a.b.0 or a.layers.0, Linen a/b_0), then by "
                    "shape and execution order (Flax's automatic names; guesses printed, "
                    "ties refused), compare each output in the layout what produced it gives "
                    "(never guessed from shapes) and each pair's hyperparameters (eps, "
                    "padding, strides, GELU approximation, pooling, ...: a mismatch fails "
                    "even below the tolerance), and report each row, the first divergence "
                    "and the torch-only modules just before it. --mutants injects known "
                    "porting defects into the Flax side and checks that each is caught where "
                    "it was put. --save-fixture stores the torch run, so that CI can "
                    "check the port with --fixture where PyTorch is not installed. "
                    "FILE.py factories are imported and called: their code runs, so name only "
                    "files you trust. Exit 0: all pass, no mutant missed; 1: divergence, "
                    "missed mutant, a port whose variables cannot take the torch weights "
                    "or nothing compared; 2: bad input.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  dln check --torch parity/examples/tiny_unet/torch_model.py:build \\\n"
               "            --flax parity/examples/tiny_unet/nnx_model.py:build "
               "--input-shape 2,3,16,16\n"
               "  dln check --torch net.py:make --flax port.py:make --input-shape 1,3,32,32 \\\n"
               "            --mutants all --report out/check --junit out/check.xml\n"
               "  dln check --torch net.py:make --flax port.py:make --input-shape 1,3,32,32 \\\n"
               "            --save-fixture net.safetensors\n"
               "  dln check --fixture net.safetensors --flax port.py:make   # no torch needed\n"
               "  dln check --torch block.py:make --flax port.py:make --input-shape 2,64,192 \\\n"
               "            --input-layout as-is               # tokens (N, L, C)\n"
               "  dln check --torch net.py:make --flax port.py:make --input-shape 2,3,64,64 \\\n"
               "            --train --apply-kwargs '{\"train\": false}' --mapping pairs.json")
    p.add_argument("--torch", default=None, metavar="FILE.py:FUNC",
                   help="function returning the torch model (FILE.py:FUNC or pkg.mod:FUNC); "
                        "it is put in eval mode")
    p.add_argument("--flax", required=True, metavar="FILE.py:FUNC",
                   help="function returning the Flax model: a flax.nnx.Module (put in eval "
                        "mode, like the torch model) or a flax.linen.Module")
    p.add_argument("--input-shape", default=None, metavar="N,C,H,W",
                   help="input shape in the torch layout, e.g. 2,3,32,32")
    p.add_argument("--fixture", default=None, metavar="FILE",
                   help="check --flax against a fixture written by --save-fixture instead of "
                        "running torch (PyTorch is never imported)")
    p.add_argument("--save-fixture", default=None, metavar="FILE",
                   help="also write the inputs, converted weights and every torch module's "
                        "output to FILE (safetensors) for --fixture")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="torch state dict (.pth/.pt or .safetensors with torch names) loaded "
                        "into the torch model first (default: its own weights)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the uniform [0, 1) inputs")
    p.add_argument("--mutants", default=None, metavar="all|NAME,...",
                   help="inject porting defects into the Flax side at every applicable site")
    p.add_argument("--tol", type=positive_float, default=FORWARD_ATOL,
                   help=f"per-row tolerance relative to max(1, max|torch|) (default "
                        f"{FORWARD_ATOL:g})")
    p.add_argument("--gradients", action="store_true",
                   help="also compare d(sum of outputs)/d(parameter) per torch parameter "
                        "(float32, by the same per-row rule)")
    p.add_argument("--input-layout", default=None, choices=("channels-last", "as-is"),
                   help="what the Flax side takes: channels-last (torch's NCHW/NCL moved to "
                        "NHWC/NLC) or as-is (tokens (N, L, C)). Default: channels-last for "
                        "4-D/5-D inputs; a 3-D input takes the layout of the first module "
                        "reading it (Conv1d: channels-last; Linear, LayerNorm, attention: "
                        "as-is), else must be given")
    p.add_argument("--mapping", default=None, metavar="FILE.json",
                   help='torch module name -> Flax path, e.g. {"layer1.0.bn1": '
                        '"BasicBlock_0/BatchNorm_1"}, where neither the rename rule (a.b.0 <-> '
                        "a/b_0) nor pairing by shape and execution order finds the pair")
    p.add_argument("--apply-kwargs", default=None, metavar="JSON",
                   help='keyword arguments of the Flax apply, e.g. \'{"train": false}\'')
    p.add_argument("--rules", default=None, metavar="FILE.py",
                   help="converter rules of your own: FILE.py defines RULES = {torch class or "
                        "class name: rule}, rule(torch_module, flax_module) -> {tensor name: "
                        "(collection, leaf, layout) or None to drop}; layouts: conv, dense, "
                        "same, scale, bias, mean, var, ... (weights/rules.py)")
    p.add_argument("--train", action="store_true",
                   help="both sides in training mode (BatchNorm on batch statistics, dropout "
                        "off): compares outputs and the updated BatchNorm statistics (torch "
                        "momentum 0.1 is Flax 0.9)")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="write report.json, report.md, per_layer_error.png (and mutants.json)")
    p.add_argument("--json", action="store_true", help="print the report JSON to stdout")
    p.add_argument("--junit", default=None, metavar="FILE",
                   help="write JUnit XML: one testcase per row and per mutant")
    p.set_defaults(run=run)


def run(args) -> int:
    import contextlib
    import json
    import sys
    from pathlib import Path

    from parity.engine.check import parse_input_shape, run_check, run_fixture_check
    from parity.engine.report import report_dict, write_junit, write_report
    from core.text import escape_text
    from parity.engine.rows import format_table, verdict_line

    if args.report and Path(args.report).exists() and not Path(args.report).is_dir():
        raise UserError(f"--report {args.report}: exists and is not a folder")
    if args.fixture is not None:
        if args.torch or args.input_shape or args.weights or args.mutants or args.gradients \
                or args.save_fixture or args.train or args.rules or args.mapping \
                or args.input_layout:
            raise UserError("--fixture takes the torch side, weights and inputs from the file: "
                            "drop --torch/--input-shape/--weights/--mutants/--gradients/"
                            "--save-fixture/--train/--rules/--mapping/--input-layout")
    elif not args.torch or not args.input_shape:
        raise UserError("--torch and --input-shape are required (or --fixture FILE)")
    stdout = sys.stdout
    out = sys.stderr if args.json else sys.stdout
    progress = (lambda m: print(f"mutant {m.defect} at {escape_text(m.site)}: {m.status}",
                                file=out)) if args.mutants else None
    # what the user's code prints never mixes into the JSON on stdout
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        if args.fixture is not None:
            result = run_fixture_check(args.fixture, args.flax, tol=args.tol)
        else:
            result = run_check(args.torch, args.flax, parse_input_shape(args.input_shape),
                               weights=args.weights, seed=args.seed, mutants=args.mutants,
                               tol=args.tol, progress=progress, gradients=args.gradients,
                               save_fixture=args.save_fixture, input_layout=args.input_layout,
                               mapping=args.mapping, apply_kwargs=args.apply_kwargs,
                               rules=args.rules, train=args.train)
    for line in result.details.get("pairs_guessed", []):
        print(f"paired by shape and execution order: {escape_text(line)}", file=out)
    print("\n".join(format_table(result.report)), file=out)
    print(verdict_line(result.report), file=out)
    if result.mutants is not None:
        print(result.mutants.summary(), file=out)
    if result.gradients is not None:
        print(result.gradients.summary(), file=out)
    if args.save_fixture:
        print(f"fixture: {args.save_fixture}", file=out)
    if args.report:
        print("report: " + ", ".join(str(p) for p in write_report(result, args.report)),
              file=out)
    if args.junit:
        print(f"junit: {write_junit(result, args.junit)}", file=out)
    if args.json:
        print(json.dumps(report_dict(result), indent=2), file=stdout)
    return 0 if result.passed else 1
