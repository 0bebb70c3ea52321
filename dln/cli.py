"""The `dln` command: argparse subcommands, each a thin call into a tested function.

Every subcommand lives in dln/commands/<name>.py with `register(subparsers)` and an
`ORDER` for the help listing; its handler returns the exit code. Numeric options take
their argparse types from dln/arguments.py (each range-checked). Errors a user can
cause (bad files, bad options) derive from core.errors.UserError: they end in one line
on stderr (escaped: core.text) and exit code 2, never a traceback. Ctrl-C, SIGTERM and SIGHUP end in one line too (exit 130, 143, 129), after
every temporary file has been removed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import signal
import sys

from core.errors import UserError
from core.text import escape_text
from dln import __version__, commands


def command_modules() -> list:
    """Every module in dln/commands, in their ORDER (the order `dln --help` lists them)."""
    mods = [importlib.import_module(f"dln.commands.{info.name}")
            for info in pkgutil.iter_modules(commands.__path__) if not info.name.startswith("_")]
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.__name__))


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors as one line (`dln CMD: error: ...`, exit 2) like every
    other user error, instead of the usage block; `--help` still shows the usage."""

    def error(self, message: str):
        if message.startswith("argument --") and message.endswith(": expected one argument"):
            option = message[len("argument "):].split(":")[0].split("/")[0]
            message += f" (a value that starts with '-' is written {option}=VALUE)"
        self.exit(2, f"{self.prog}: error: {escape_text(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="dln",
        description="Port DLN (Deep Lightening Network) from PyTorch to JAX and prove the port "
                    "right: convert weights, enhance images, compare the frameworks.")
    parser.add_argument("--version", action="version", version=f"dln {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in command_modules():
        module.register(sub)
    return parser


class TerminatedBySignal(BaseException):
    """SIGTERM or SIGHUP arrived: raised where the program is, so that every `finally`
    (the atomic writers' clean-up of their temporary files) runs on the way out, as
    for Ctrl-C. A BaseException, so `except Exception` blocks do not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


CAUGHT_SIGNALS = ("SIGTERM", "SIGHUP")


@contextlib.contextmanager
def signals_as_exceptions():
    """While the block runs, SIGTERM / SIGHUP raise TerminatedBySignal in this process.

    Processes forked meanwhile (batch workers) inherit the handler; there it restores
    the default action and re-sends the signal, so a worker simply ends.
    """
    owner = os.getpid()

    def handler(signum, _frame):
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise TerminatedBySignal(signum)

    previous = {}
    try:
        for name in CAUGHT_SIGNALS:
            number = getattr(signal, name, None)
            if number is not None:
                previous[number] = signal.signal(number, handler)
    except ValueError:  # not the main thread: signals cannot be caught here
        pass
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def printing_never_fails() -> None:
    """Whatever a name holds, printing it cannot raise: text that the terminal's encoding
    cannot show (a file name that is not UTF-8, under a UTF-8 or an ASCII locale) is
    written as backslash escapes instead of ending the run in a traceback after its
    work is done. Names are also escaped where they are printed (core.text)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    printing_never_fails()
    parser = build_parser()
    args = parser.parse_args(argv)  # a bad option: one line and SystemExit(2)
    if argv is None and args.command == "enhance":   # the real command line, not a call
        from dln.huge_pages import reexec_with_huge_pages

        reexec_with_huge_pages(sys.argv[1:], args.backend)   # returns where it does not apply
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        with signals_as_exceptions():
            return int(args.run(args) or 0)
    except TerminatedBySignal as stop:
        print(f"dln {args.command}: stopped by {stop.name}", file=sys.stderr)
        return 128 + stop.signum
    except UserError as err:  # one line, whatever names the message holds
        code = getattr(err, "exit_code", 2)  # PortDiverges: a FAIL verdict, exit 1
        print(f"dln {args.command}: {'FAIL' if code == 1 else 'error'}: {escape_text(err)}",
              file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print(f"dln {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # output piped into e.g. `head`, which closed early: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
