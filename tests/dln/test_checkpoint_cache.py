"""A .pth read once by a JAX run is kept as its verified safetensors conversion: later
JAX runs of the same bytes read it without PyTorch and get the same tensors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from dln.checkpoint_cache import CACHE_SUBFOLDER, load_checkpoint_once

REPO = Path(__file__).resolve().parents[2]


def _same(a, b) -> bool:
    return a.config == b.config and a.torch_state.keys() == b.torch_state.keys() and all(
        np.array_equal(a.torch_state[k], b.torch_state[k]) for k in a.torch_state)


def test_the_kept_conversion_gives_the_same_checkpoint_per_variant(tmp_path, authors_pth_16):
    from weights.convert import load_checkpoint

    direct = load_checkpoint(authors_pth_16)
    first = load_checkpoint_once(authors_pth_16, {}, tmp_path)
    kept = list((tmp_path / CACHE_SUBFOLDER).glob("*.safetensors"))
    assert len(kept) == 1 and _same(first, direct)
    again = load_checkpoint_once(authors_pth_16, {}, tmp_path)
    assert _same(again, direct) and again.source == authors_pth_16
    paper = load_checkpoint_once(authors_pth_16, {"residual_sign": "paper"}, tmp_path)
    assert paper.config.residual_sign == "paper"
    assert len(list((tmp_path / CACHE_SUBFOLDER).glob("*.safetensors"))) == 2
    kept[0].write_bytes(b"damaged")                  # a damaged entry: read the .pth again
    assert _same(load_checkpoint_once(authors_pth_16, {}, tmp_path), direct)
    assert _same(load_checkpoint_once(authors_pth_16, {}, None), direct)   # no cache


CHILD = """
import json, sys
from dln.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "torch": "torch" in sys.modules}))
"""


def test_no_jax_run_of_a_pth_imports_pytorch_a_child_reads_it_once(tmp_path, authors_pth_16):
    """The first run's child process reads the .pth (while the run imports JAX) and keeps
    its conversion; the run itself, and the next, read the kept entry."""
    Image.fromarray(np.full((20, 28, 3), 40, np.uint8)).save(tmp_path / "a.png")
    env = {**os.environ, "DLN_CACHE_DIR": str(tmp_path / "cache")}
    runs = []
    for out in ("o1", "o2"):
        done = subprocess.run([sys.executable, "-c", CHILD, "enhance", "--weights",
                               str(authors_pth_16), "--out", str(tmp_path / out),
                               str(tmp_path / "a.png")], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert runs[0] == {"code": 0, "torch": False}, runs
    assert runs[1] == {"code": 0, "torch": False}, runs
    assert len(list((tmp_path / "cache" / CACHE_SUBFOLDER).glob("*.safetensors"))) == 1
    assert (tmp_path / "o1" / "a.png").read_bytes() == (tmp_path / "o2" / "a.png").read_bytes()


def test_the_cache_key_of_a_fifo_is_none_at_once_not_a_wait_for_a_writer(
        tmp_path, outcome_without_blocking):
    """The key hashes the file by name; a FIFO there (swapped in after is_file, or any
    file whose reads block) must not hang the run: no key, and the loader says why."""
    from dln.checkpoint_cache import _key

    fifo = tmp_path / "w.pth"
    os.mkfifo(fifo)
    assert outcome_without_blocking(lambda path: _key(path, {}), fifo,
                                    "hashing a FIFO for the cache key") is None


def test_a_pth_rewritten_while_it_is_read_is_not_kept_under_its_old_key(tmp_path,
                                                                        authors_pth_16,
                                                                        monkeypatch):
    """The key is the hash of the bytes before reading; if the file holds other bytes
    afterwards, what was read may be either, so nothing is kept for the old key."""
    import importlib

    convert = importlib.import_module("weights.convert")  # the package's `convert` is a function
    real_load = convert.load_checkpoint
    original = authors_pth_16.read_bytes()

    def load_then_rewrite(path, overrides=None):
        ckpt = real_load(path, overrides)
        authors_pth_16.write_bytes(original + b"\0")  # another file from now on
        return ckpt

    monkeypatch.setattr(convert, "load_checkpoint", load_then_rewrite)
    load_checkpoint_once(authors_pth_16, {}, tmp_path)
    assert not list((tmp_path / CACHE_SUBFOLDER).glob("*.safetensors"))
    authors_pth_16.write_bytes(original)
    monkeypatch.setattr(convert, "load_checkpoint", real_load)
    load_checkpoint_once(authors_pth_16, {}, tmp_path)  # unchanged: kept
    assert len(list((tmp_path / CACHE_SUBFOLDER).glob("*.safetensors"))) == 1


def test_the_background_reader_starts_only_for_a_pth_not_yet_kept(tmp_path, authors_pth_16):
    from dln.checkpoint_cache import keep_in_background

    child = keep_in_background(authors_pth_16, tmp_path)
    assert child is not None and child.wait(timeout=120) == 0
    assert len(list((tmp_path / CACHE_SUBFOLDER).glob("*.safetensors"))) == 1
    assert keep_in_background(authors_pth_16, tmp_path) is None      # kept: nothing to do
    assert keep_in_background(authors_pth_16, None) is None          # no cache folder
    assert keep_in_background(tmp_path / "absent.pth", tmp_path) is None


def test_a_broken_pth_read_in_the_background_still_ends_in_the_one_line_error(tmp_path):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    Image.fromarray(np.full((20, 28, 3), 40, np.uint8)).save(tmp_path / "a.png")
    done = subprocess.run([sys.executable, "-m", "dln.cli", "enhance", "--weights", str(broken),
                           "--out", str(tmp_path / "o"), str(tmp_path / "a.png")], cwd=REPO,
                          env={**os.environ, "DLN_CACHE_DIR": str(tmp_path / "cache")},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "not a readable PyTorch checkpoint" in done.stderr.strip().splitlines()[-1]
    assert not list((tmp_path / "cache").rglob("*.safetensors"))


def test_the_background_reader_imports_this_package_not_one_in_the_working_folder(
        tmp_path, authors_pth_16, monkeypatch):
    from dln.checkpoint_cache import keep_in_background

    planted = tmp_path / "cwd" / "dln"
    planted.mkdir(parents=True)
    (planted / "__init__.py").write_text("raise SystemExit(7)\n")
    monkeypatch.chdir(tmp_path / "cwd")
    child = keep_in_background(authors_pth_16, tmp_path / "cache")
    assert child.wait(timeout=120) == 0
    assert len(list((tmp_path / "cache" / CACHE_SUBFOLDER).glob("*.safetensors"))) == 1
