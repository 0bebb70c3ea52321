"""Flat dotted names <-> NNX state, strictly: what NNX's own loaders let through is refused
here with sorted lists; only Params and BatchStats travel, never RNG state."""

from __future__ import annotations

import numpy as np
import pytest

from weights.errors import CheckpointError


def _small(rngs):
    from flax import nnx

    class Small(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(2, 3, rngs=rngs)
            self.act = nnx.PReLU(negative_slope_init=0.25)
            self.bn = nnx.BatchNorm(3, rngs=rngs)
            self.drop = nnx.Dropout(0.1, rngs=rngs)  # holds RNG state

        def __call__(self, x):
            return self.drop(self.bn(self.act(self.lin(x)), use_running_average=True),
                             deterministic=True)

    return Small(rngs)


def test_nnx_update_accepts_a_transposed_kernel_and_a_vector_slope_the_strict_fill_refuses_both():
    from flax import nnx

    from weights.nnx_state import flat_weights, load_weights

    model = _small(nnx.Rngs(0))
    good = flat_weights(model)
    bad = dict(good)
    bad["lin.kernel"] = good["lin.kernel"].T.copy()            # (3, 2) for a (2, 3) slot
    bad["act.negative_slope"] = np.full((3,), 0.1, np.float32)  # (C,) for a scalar slot
    # NNX itself takes both without a word (the facts this module exists for)
    loose = _small(nnx.Rngs(0))
    nnx.replace_by_pure_dict(state := nnx.state(loose), {"lin": {"kernel": bad["lin.kernel"]}})
    nnx.update(loose, state)
    assert loose.lin.kernel[...].shape == (3, 2)
    # the strict fill refuses them, with missing and unexpected names, each list sorted
    del bad["bn.var"], bad["bn.bias"]
    bad["zz.extra"] = np.zeros(1, np.float32)
    bad["aa.extra"] = np.zeros(1, np.float32)
    with pytest.raises(CheckpointError) as err:
        load_weights(model, bad)
    text = str(err.value)
    assert "2 missing: bn.bias, bn.var" in text
    assert "2 unexpected: aa.extra, zz.extra" in text
    assert ("2 wrong shape: act.negative_slope (3,) != expected (), "
            "lin.kernel (3, 2) != expected (2, 3)") in text
    assert np.array_equal(flat_weights(model)["lin.kernel"], good["lin.kernel"])  # untouched


def test_weights_are_params_and_batch_stats_never_rng_state_and_round_trip_bit_exactly():
    from flax import nnx

    from weights.nnx_state import flat_weights, load_weights, module_from_weights

    model = _small(nnx.Rngs(0))
    flat = flat_weights(model)
    assert sorted(flat) == ["act.negative_slope", "bn.bias", "bn.mean", "bn.scale", "bn.var",
                            "lin.bias", "lin.kernel"]
    rng = np.random.default_rng(0)
    new = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in flat.items()}
    key_before = np.asarray(jax_key_data(model))
    load_weights(model, new)
    assert all(np.array_equal(flat_weights(model)[k], v) for k, v in new.items())
    assert np.array_equal(np.asarray(jax_key_data(model)), key_before)  # RNG state untouched
    # an abstract module holding RNG state cannot be completed from weights alone
    abstract = nnx.eval_shape(lambda: _small(nnx.Rngs(0)))
    with pytest.raises(CheckpointError, match=r"not weights \(drop\.rngs\.count, drop\.rngs\.key\)"):
        module_from_weights(abstract, new)


def jax_key_data(model):
    import jax

    return jax.random.key_data(model.drop.rngs.key[...])


def test_weights_of_another_dtype_are_refused_by_name():
    from flax import nnx

    from weights.nnx_state import flat_weights, load_weights

    model = _small(nnx.Rngs(0))
    flat = flat_weights(model)
    flat["lin.bias"] = flat["lin.bias"].astype(np.float64)
    with pytest.raises(CheckpointError, match=r"another dtype.*lin\.bias float64"):
        load_weights(model, flat)


def test_torch_weights_convert_into_an_nnx_sequential_by_the_rules_and_misfits_are_listed():
    """torch `body.0` lives at NNX `body.layers.0` inside an nnx.Sequential; the converter's
    layout rules apply (conv OIHW -> HWIO, PReLU (1,) -> scalar); a port whose conv has
    in and out swapped is refused with the tensor named."""
    import torch
    from flax import nnx

    from weights.nnx_state import flat_weights, torch_module_to_nnx

    torch.manual_seed(0)
    reference = torch.nn.Sequential()
    reference.add_module("body", torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1),
                                                     torch.nn.PReLU()))

    class Port(nnx.Module):
        def __init__(self, cin, cout, rngs):
            self.body = nnx.Sequential(nnx.Conv(cin, cout, (3, 3), padding=((1, 1), (1, 1)),
                                                rngs=rngs), nnx.PReLU(0.25))

    port = Port(3, 4, nnx.Rngs(0))
    torch_module_to_nnx(reference, port)
    flat = flat_weights(port)
    weight = reference.body[0].weight.detach().numpy()
    assert sorted(flat) == ["body.layers.0.bias", "body.layers.0.kernel",
                            "body.layers.1.negative_slope"]
    assert np.array_equal(flat["body.layers.0.kernel"], weight.transpose(2, 3, 1, 0))
    assert flat["body.layers.1.negative_slope"].shape == ()
    x = np.random.default_rng(1).random((1, 3, 5, 6), dtype=np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
    assert np.abs(np.asarray(port.body(x.transpose(0, 2, 3, 1))) - expected).max() < 1e-5
    with pytest.raises(CheckpointError, match=r"body\.layers\.0\.kernel \(3, 3, 3, 4\) != "
                                              r"expected \(3, 3, 4, 3\)"):
        torch_module_to_nnx(reference, Port(4, 3, nnx.Rngs(0)))
