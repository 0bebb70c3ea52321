"""The `dln` command: argparse subcommands, each a thin call into a tested function.

Every subcommand lives in dln/commands/<name>.py with `register(subparsers)` and an
`ORDER` for the help listing; its handler returns the exit code. Errors a user can cause (bad files, bad options)
derive from core.errors.UserError: they end in one line on stderr and exit code 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from core.errors import UserError
from dln import __version__, commands


def command_modules() -> list:
    """Every module in dln/commands, in their ORDER (the order `dln --help` lists them)."""
    mods = [importlib.import_module(f"dln.commands.{info.name}")
            for info in pkgutil.iter_modules(commands.__path__) if not info.name.startswith("_")]
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.__name__))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dln",
        description="Port DLN (Deep Lightening Network) from PyTorch to JAX and prove the port "
                    "right: convert weights, enhance images, compare the frameworks.")
    parser.add_argument("--version", action="version", version=f"dln {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in command_modules():
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except UserError as err:
        print(f"dln {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dln {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # output piped into e.g. `head`, which closed early: not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
