"""The NNX port's tiles and buckets (port/nnx_tiled.py) equal the plain NNX forward, and
they run the NNX model's own code (not the Linen port under another name)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core.config import DLNConfig


def _lowlight(h, w, seed):
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32) * 0.35


@pytest.fixture(scope="module")
def ckpt16():
    from weights.convert import checkpoint_from_torch_state
    from weights.synthetic import random_torch_state

    cfg = DLNConfig(dim=16)
    return checkpoint_from_torch_state(random_torch_state(cfg, seed=11), cfg)


def test_nnx_tiles_buckets_and_transposed_runs_match_the_plain_nnx_forward(ckpt16):
    # dim 16, an odd portrait image (its whole run is transposed into a landscape bucket)
    # and a tile that does not divide it; 5 stage programs, the bucket, the whole-image
    # runner and the plain forward compile (~2 s quiet, 5 s on the loaded 2-core machine).
    # The plain NNX forward is bit-equal to the Linen port's (tests/models/test_nnx_model.py);
    # the PNGs of the two backends are compared through `dln enhance` (tests/dln).
    from parity.engine.tiled_vs_whole import compare_tiled_with_whole

    rows = compare_tiled_with_whole(ckpt16, _lowlight(53, 31, seed=4), (20,),
                                    backends=("nnx",), maps_in_memory=(True,))
    assert [r["path"] for r in rows] == ["tile 20 (memory)", "whole 32x56 transposed",
                                         "bucket 56x32"]
    bad = [r for r in rows if not r["passed"]]
    assert not bad, bad


def _bucket(stages_class, ckpt, x, mask):
    """The bucket forward of fresh stages (traced anew: a patched class takes effect)."""
    return stages_class(ckpt.flax_tree(), ckpt.config).bucket(x, mask)[0]


def test_a_change_to_the_nnx_model_code_changes_what_the_nnx_stages_compute(
        ckpt16, monkeypatch):
    # (that the Linen stages never call an NNX module is the next test's)
    import port.nnx_model as nnx_model
    from core.tiling import bucket_batch
    from port.nnx_tiled import NnxStages

    x, mask = bucket_batch([_lowlight(27, 30, seed=1)])
    before = _bucket(NnxStages, ckpt16, x, mask)
    # the lightening op made a darkening op, in the NNX model's class only
    monkeypatch.setattr(nnx_model.LighteningOp, "__call__",
                        lambda self, v: self.conv_Decoder(self.conv_Encoder(v)
                                                          - self.conv_Offset(self.conv_Encoder(v))))
    after = _bucket(NnxStages, ckpt16, x, mask)
    assert np.abs(after - before).max() > 1e-3


def test_every_nnx_convolution_is_masked_and_the_stages_call_the_nnx_blocks(ckpt16, monkeypatch):
    """Traced only (jax.eval_shape: nothing compiles): each of DLN's 40 convolutions runs
    through MaskedConv, the NNX ConvBlock runs 39 times, and the Linen stages never
    call an NNX module."""
    from flax import nnx

    import port.nnx_model as nnx_model
    import port.nnx_tiled as nnx_tiled
    from port.nnx_model import abstract_model
    from port.tiled import JaxStages

    convs = sum(isinstance(m, nnx.Conv) for _, m in nnx.iter_modules(abstract_model(
        ckpt16.config)))
    assert convs == 40
    counts = {"masked": 0, "block": 0}

    def counted(cls, key):
        original = cls.__call__

        def call(self, *args):
            counts[key] += 1
            return original(self, *args)
        monkeypatch.setattr(cls, "__call__", call)

    counted(nnx_tiled.MaskedConv, "masked")
    counted(nnx_model.ConvBlock, "block")
    x = jax.ShapeDtypeStruct((1, 32, 40, 3), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, 32, 40, 1), jnp.float32)
    params = jax.tree_util.tree_map(jnp.asarray, ckpt16.flax_tree())
    jax.eval_shape(JaxStages(ckpt16.flax_tree(), ckpt16.config)._bucket_forward, params, x, mask)
    assert counts == {"masked": 0, "block": 0}
    stages = nnx_tiled.NnxStages(ckpt16.flax_tree(), ckpt16.config)
    out = jax.eval_shape(stages._bucket_forward, params, x, mask)
    assert out.shape == (1, 32, 40, 3)
    assert counts == {"masked": 40, "block": 39}
