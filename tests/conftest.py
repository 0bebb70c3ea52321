"""Shared fixtures: seeded random checkpoints in the authors' file layout."""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import pytest

os.environ.setdefault("DLN_NO_PROGRESS", "1")
# JAX's persistent compilation cache (dln enhance): never the user's real cache folder.
os.environ["DLN_CACHE_DIR"] = __import__("tempfile").mkdtemp(prefix="dln-test-jax-cache-")

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
