"""Shared fixtures: seeded random checkpoints in the authors' file layout."""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import pytest

os.environ.setdefault("DLN_NO_PROGRESS", "1")
# One JAX persistent compilation cache for the whole run, never the user's real cache
# folder: made by the first process that loads this file (pytest-xdist's controller,
# whose workers and every subprocess inherit the variables), so a program compiled by
# one test (the same network at the same shapes) is read, not recompiled, by the others.
# Compiled programs are deterministic; tests of the cache itself set their own folder.
if "DLN_TEST_JAX_CACHE" not in os.environ:
    os.environ["DLN_TEST_JAX_CACHE"] = __import__("tempfile").mkdtemp(prefix="dln-test-jax-cache-")
os.environ["DLN_CACHE_DIR"] = os.environ["DLN_TEST_JAX_CACHE"]
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["DLN_TEST_JAX_CACHE"]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
# tests call `dln train` in their own process, where splitting the CPU into host
# devices (port.host_devices) would change XLA for every later test of that worker;
# the split is tested directly and through the train benchmark's worker
os.environ["DLN_CPU_SPLIT"] = "off"
# The suite runs in two pytest-xdist workers on two cores: one compute thread each for
# XLA and PyTorch (and every subprocess), not two each fighting over the cores (the
# whole suite: 340 s against 361 s with the libraries' own thread pools, 2-core AMD
# EPYC). Results never depend on thread counts; a test that needs more sets its own.
if "--xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false").strip()
os.environ.setdefault("OMP_NUM_THREADS", "1")

from core.config import DLNConfig  # noqa: E402
from weights.synthetic import random_torch_state  # noqa: E402


def write_authors_pth(path, state: dict, prefix: str = "module.", wrap: str | None = None):
    """Save a state dict the way the authors' training script does: torch.save of
    DataParallel's state_dict (every key prefixed `module.`), optionally wrapped."""
    import torch

    sd = OrderedDict((prefix + k, torch.from_numpy(np.array(v))) for k, v in state.items())
    torch.save({wrap: sd} if wrap else sd, path)
    return path


@pytest.fixture
def random_state_64():
    return random_torch_state(DLNConfig(), seed=7)


@pytest.fixture
def authors_pth_64(tmp_path, random_state_64):
    return write_authors_pth(tmp_path / "authors.pth", random_state_64)


@pytest.fixture
def authors_pth_16(tmp_path):
    return write_authors_pth(tmp_path / "authors16.pth", random_torch_state(DLNConfig(dim=16), 3))


@pytest.fixture
def outcome_without_blocking():
    """call(function, fifo, what): function(fifo)'s result or the exception it raised, run
    in a thread; if it is still blocked on opening the FIFO after 10 s, the open is
    released (a writer opens the other end) and the test fails naming `what`."""
    import threading

    def call(function, fifo, what: str):
        outcome: list = []

        def target():
            try:
                outcome.append(function(fifo))
            except BaseException as err:  # noqa: BLE001 - handed to the test thread
                outcome.append(err)

        worker = threading.Thread(target=target, daemon=True)
        worker.start()
        worker.join(10)
        if worker.is_alive():  # release the blocked open, then fail
            os.close(os.open(fifo, os.O_WRONLY))
            worker.join(10)
            raise AssertionError(f"{what} blocked")
        return outcome[0]

    return call


def pytest_sessionfinish(session, exitstatus):
    """The run's compilation cache goes when the run ends (in the process that made it)."""
    if not hasattr(session.config, "workerinput"):  # not an xdist worker
        __import__("shutil").rmtree(os.environ.get("DLN_TEST_JAX_CACHE", ""), ignore_errors=True)
