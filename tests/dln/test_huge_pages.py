"""`dln enhance` re-executes itself once with glibc's huge-page tunable (dln/huge_pages.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dln import huge_pages, own_package


@pytest.fixture
def capable(monkeypatch):
    """A Linux glibc >= 2.35 whose kernel offers transparent huge pages, whatever runs the
    tests."""
    monkeypatch.setattr(huge_pages, "_glibc_has_the_tunable", lambda: True)
    monkeypatch.setattr(huge_pages, "_kernel_offers_huge_pages", lambda: True)
    monkeypatch.setattr(huge_pages.sys, "platform", "linux")


def test_the_tunable_is_added_after_the_users_own_and_never_twice(capable):
    env = huge_pages.huge_pages_environment({"HOME": "/h"})
    assert env == {"HOME": "/h", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    env = huge_pages.huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=1"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=1:glibc.malloc.hugetlb=1"
    # the user's own value (or our first exec) is left alone: no second exec
    assert huge_pages.huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) \
        is None


@pytest.mark.parametrize("word", ["off", "0", "False", "NO"])
def test_the_switch_turns_it_off(capable, word):
    assert huge_pages.huge_pages_environment({huge_pages.SWITCH: word}) is None


def test_nothing_changes_where_the_kernel_or_libc_cannot(monkeypatch):
    monkeypatch.setattr(huge_pages, "_glibc_has_the_tunable", lambda: False)
    assert huge_pages.huge_pages_environment({}) is None
    monkeypatch.setattr(huge_pages, "_glibc_has_the_tunable", lambda: True)
    monkeypatch.setattr(huge_pages, "THP_SETTING", huge_pages.Path("/nonexistent/thp"))
    assert huge_pages.huge_pages_environment({}) is None


def test_the_exec_runs_this_package_with_the_same_arguments(capable, monkeypatch):
    calls = []
    monkeypatch.setattr(huge_pages.os, "execve", lambda *a: calls.append(a))
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv(huge_pages.SWITCH, raising=False)
    huge_pages.reexec_with_huge_pages(["enhance", "--weights", "w.pth", "a b.png"], "jax")
    (path, argv, env), = calls
    assert path == sys.executable and argv[:2] == [sys.executable, "-P"]
    assert argv[2] == "-c" and argv[4:] == [own_package.ROOT, "enhance", "--weights",
                                            "w.pth", "a b.png"]
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


def test_the_command_line_execs_once_and_runs(tmp_path):
    """The real `dln enhance`: its help (parsed before any exec), then a run that execs
    once, without a loop, and ends in its one-line error, in a folder that holds another
    `dln` package (the exec imports this one)."""
    planted = tmp_path / "dln"
    planted.mkdir()
    (planted / "__init__.py").write_text("raise SystemExit('the planted dln was imported')\n")
    (planted / "cli.py").write_text("raise SystemExit('the planted dln was imported')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES",
                                                            huge_pages.SWITCH)}
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); sys.argv[0] = 'dln'; "
            "from dln.cli import main; sys.exit(main())")

    def dln(*args):
        return subprocess.run([sys.executable, "-P", "-c", code, own_package.ROOT, *args],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)

    done = dln("enhance", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: dln enhance")
    done = dln("enhance", "--weights", "missing.pth", "--out", "out", "x.png")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == ["dln enhance: error: missing.pth: no such file"]


@pytest.mark.parametrize("args,execs", [(["enhance", "x.png"], True),
                                        (["enhance", "--backend", "nnx", "x.png"], True),
                                        (["enhance", "--backend=torch", "x.png"], False),
                                        (["enhance", "--backend", "torch-compile", "x.png"],
                                         False),
                                        (["enhance", "--back", "torch", "x.png"], False)])
def test_only_the_jax_backends_exec(capable, monkeypatch, tmp_path, args, execs):
    """The decision on the command line as argparse reads it (an abbreviated option too);
    exec replaced by a recorder, so the run goes on to its one-line error."""
    from dln import cli

    calls = []
    monkeypatch.setattr(huge_pages.os, "execve", lambda *a: calls.append(a))
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv(huge_pages.SWITCH, raising=False)
    monkeypatch.setattr(sys, "argv", ["dln", *args, "--weights", str(tmp_path / "no.pth"),
                                      "--out", str(tmp_path / "out")])
    assert cli.main() == 2
    assert bool(calls) == execs
