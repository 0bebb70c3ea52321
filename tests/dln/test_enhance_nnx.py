"""`dln enhance --backend nnx`: the Flax NNX port through the one predictor writes the
Linen backend's PNGs, whole (size buckets, a portrait image transposed; weights from an
Orbax checkpoint folder), batched and tiled; its bucket shapes have their own index key."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from dln.cli import main
from parity.engine.tolerance import assert_pngs_match


def _folder(root, sizes, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir()
    for i, (h, w) in enumerate(sizes):
        Image.fromarray((rng.random((h, w, 3)) * 80).astype(np.uint8)).save(root / f"im{i}.png")
    return root


def _pngs(folder):
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def test_nnx_backend_from_orbax_writes_the_linen_pngs_bucketed_batched_and_tiled(
        tmp_path, authors_pth_16, monkeypatch, capsys):
    # dim 16; 4 odd sizes in one bucket, both orientations; an Orbax conversion and 4
    # runs (~7 s quiet, 15 s on the loaded 2-core machine: the NNX stage, bucket and
    # batch programs compile once each; the one end-to-end check of the NNX backend)
    from weights.convert import convert

    cache = tmp_path / "cache"
    monkeypatch.setenv("DLN_CACHE_DIR", str(cache))
    orbax = tmp_path / "w.orbax"
    convert(authors_pth_16, orbax)
    inputs = _folder(tmp_path / "in", [(37, 50), (40, 55), (33, 61), (61, 33)])
    assert main(["enhance", "--weights", str(authors_pth_16), "--backend", "jax",
                 "--out", str(tmp_path / "linen"), "--tile", "off", str(inputs)]) == 0
    runs = {"off": (orbax, ["--tile", "off"]),
            "batch": (authors_pth_16, ["--tile", "off", "--batch", "3"]),
            "tiled": (authors_pth_16, ["--tile", "24"])}
    for name, (weights, extra) in runs.items():
        capsys.readouterr()
        assert main(["enhance", "--weights", str(weights), "--backend", "nnx",
                     "--out", str(tmp_path / name), *extra, str(inputs)]) == 0
        assert "with nnx" in capsys.readouterr().out
    reference = _pngs(tmp_path / "linen")
    assert len(reference) == 4
    for name in runs:
        pngs = _pngs(tmp_path / name)
        assert sorted(pngs) == sorted(reference)
        for image, png in pngs.items():
            assert_pngs_match(png, reference[image], what=f"nnx {name} {image} vs linen")
    # the NNX programs' bucket shapes are listed under their own key, beside Linen's
    index = json.loads((cache / "buckets.json").read_text())
    assert sorted(k.split("-")[0] for k in index) == ["jax", "nnx"]
    assert sorted(map(tuple, index[next(k for k in index if k.startswith("nnx-"))])) == [
        (1, 40, 61), (3, 40, 61)]
