"""port.losses (JAX, NHWC) against reference_torch.losses (torch, NCHW) on NON-square
batches, in each branch of the authors' SSIM range rule.

The torch side runs first and hands plain numpy arrays to the JAX side: the two
frameworks' heavy work never interleaves, and JAX never runs in float64 in this
process (issue 4, note 4: that combination has crashed inside XLA). The float64
check of the formulas runs JAX in a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from parity.engine.tolerance import (LOSS_F64_RTOL, LOSS_GRAD_RTOL, LOSS_RTOL, SMOOTH_LOSS_GRAD_RTOL,
                              assert_close, assert_relative_l2, relative_l2)

# name -> (N, H, W), value range of the images, the L the range rule must pick
CASES = {
    "unit_range_2x48x80": ((2, 48, 80), (0.0, 1.0), 1.0),
    "below_minus_half_2x48x80": ((2, 48, 80), (-1.0, 1.0), 2.0),
    "scale_255_1x61x93": ((1, 61, 93), (0.0, 255.0), 255.0),
}
LOSSES = ("ssim_loss", "tv_loss", "dln_loss")


def textured_pair(shape, lo, hi, seed):
    """Target with pixel-level texture, prediction = target + noise; NHWC float32."""
    rng = np.random.default_rng(seed)
    target = rng.uniform(0, 1, shape + (3,))
    pred = np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1)
    return [(lo + (hi - lo) * z).astype(np.float32) for z in (pred, target)]


def smooth_pair(shape, seed):
    """A smooth target (local variance ~1e-3 around a mean ~0.5) and a noisy prediction:
    SSIM's f(x^2) - f(x)^2 cancels three digits here, in either framework."""
    rng = np.random.default_rng(seed)
    n, h, w = shape
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    base = np.stack([np.sin(3 * xx + c) * np.cos(2 * yy - c) for c in range(3)], -1)
    target = 0.5 + 0.45 * base[None] * rng.uniform(0.5, 1.0, (n, 1, 1, 3))
    pred = np.clip(target + rng.normal(0, 0.08, target.shape), 0, 1)
    return pred.astype(np.float32), target.astype(np.float32)


def torch_losses(pred, target, dtype_name="float32"):
    """{loss name: (value, d value / d pred as NHWC)} and the SSIM, from reference_torch."""
    import torch

    from reference_torch import losses as ref

    dtype = getattr(torch, dtype_name)
    to_nchw = lambda z: torch.from_numpy(z.transpose(0, 3, 1, 2).copy()).to(dtype)  # noqa: E731
    out = {"L": ref.authors_ssim_range(to_nchw(pred))}
    for name in LOSSES:
        pred_t = to_nchw(pred).requires_grad_(True)
        args = (pred_t,) if name == "tv_loss" else (pred_t, to_nchw(target))
        value = getattr(ref, name)(*args)
        value.backward()
        out[name] = (value.item(), pred_t.grad.numpy().transpose(0, 2, 3, 1).copy())
    with torch.no_grad():
        out["ssim"] = ref.ssim(to_nchw(pred), to_nchw(target)).item()
    return out


def jax_losses(pred, target):
    import jax

    from port import losses

    out = {"ssim": float(losses.ssim(pred, target))}
    for name in LOSSES:
        f = getattr(losses, name)
        if name == "tv_loss":
            value, grad = jax.value_and_grad(f)(pred)
        elif name == "ssim_loss":  # its gradient is dln_loss's minus 0.001 TV's: not recomputed
            value, grad = f(pred, target), None
        else:
            value, grad = jax.value_and_grad(f)(pred, target)
        out[name] = (float(value), None if grad is None else np.asarray(grad))
    return out


@pytest.fixture(scope="module")
def torch_results():
    """Everything torch computes, before JAX runs."""
    results = {}
    for seed, (name, (shape, (lo, hi), _)) in enumerate(CASES.items()):
        pred, target = textured_pair(shape, lo, hi, seed)
        results[name] = dict(pred=pred, target=target, **torch_losses(pred, target))
    pred, target = smooth_pair((2, 48, 80), seed=11)  # one window's covariance rounds to 0
    results["smooth"] = dict(pred=pred, target=target, f32=torch_losses(pred, target),
                             f64=torch_losses(pred, target, "float64"))
    return results


@pytest.mark.parametrize("case", list(CASES))
def test_range_rule_picks_the_same_L_from_the_prediction(torch_results, case):
    from port.losses import authors_ssim_range

    r = torch_results[case]
    expected_l = CASES[case][2]
    assert r["L"] == expected_l, f"torch range rule picked L={r['L']}, case needs {expected_l}"
    got = float(authors_ssim_range(r["pred"]))
    assert got == expected_l, f"JAX range rule picked L={got}, expected {expected_l}"


@pytest.mark.parametrize("case", list(CASES))
def test_loss_values_and_gradients_match_torch_on_non_square_batches(torch_results, case):
    r = torch_results[case]
    j = jax_losses(r["pred"], r["target"])
    rel = abs(j["ssim"] - r["ssim"]) / abs(r["ssim"])
    assert rel <= LOSS_RTOL, f"SSIM {j['ssim']!r} vs torch {r['ssim']!r}: relative {rel:.2e}"
    tv_rel = abs(j["tv_loss"][0] - r["tv_loss"][0]) / r["tv_loss"][0]
    assert tv_rel <= LOSS_RTOL, f"TV {j['tv_loss'][0]!r} vs {r['tv_loss'][0]!r}: {tv_rel:.2e}"
    for name in LOSSES:
        assert_close(j[name][0], r[name][0], LOSS_RTOL, what=f"{case} {name}")
        if j[name][1] is not None:
            assert_relative_l2(j[name][1], r[name][1], LOSS_GRAD_RTOL, what=f"{case} d {name}")


def _zero_covariance_footprint(pred, target):
    """Mask of the pixels read by windows whose float32 covariance f(ab) - f(a) f(b)
    rounds to exactly 0: there dm-pix's clip `sign(s01) * min(sqrt(s00 s11), |s01|)`
    has derivative sign(0) = 0, so the port drops that window's covariance gradient,
    which the authors' code (no clipping) keeps."""
    import jax.numpy as jnp

    from port.losses import SSIM_WINDOW, gaussian_window, valid_filter

    blur = valid_filter(gaussian_window())
    a, b = jnp.asarray(pred), jnp.asarray(target)
    zero = np.asarray(blur(a * b) - blur(a) * blur(b)) == 0
    mask = np.zeros(pred.shape, bool)
    for n, i, j, c in np.argwhere(zero):
        mask[n, i:i + SSIM_WINDOW, j:j + SSIM_WINDOW, c] = True
    return mask


def test_port_is_as_close_to_float64_truth_as_torch_float32_on_smooth_images(torch_results):
    # On smooth images neither float32 side reaches 1e-6 of the other: judge each
    # against the float64 evaluation of the same formulas (same float32 window).
    r = torch_results["smooth"]
    j = jax_losses(r["pred"], r["target"])
    truth, torch32 = r["f64"], r["f32"]
    keep = ~_zero_covariance_footprint(r["pred"], r["target"])
    assert keep.mean() > 0.9, f"only {keep.mean():.1%} of pixels outside zero-covariance windows"
    for name in LOSSES:
        assert_close(j[name][0], truth[name][0], LOSS_RTOL, what=f"smooth {name} vs float64")
        if j[name][1] is None:
            continue
        port_err = relative_l2(j[name][1][keep], truth[name][1][keep])
        torch_err = relative_l2(torch32[name][1][keep], truth[name][1][keep])
        assert port_err <= SMOOTH_LOSS_GRAD_RTOL, (
            f"d {name}: port {port_err:.2e} from float64 (torch float32: {torch_err:.2e}), "
            f"{(~keep).sum()} pixels under zero-covariance windows left out")


_F64_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import jax
    jax.config.update("jax_enable_x64", True)
    from port import losses
    data = np.load(sys.argv[1])
    out = {}
    # one compilation for the cases' one shape (eager, each op compiles on its own: ~2x slower)
    loss_and_grad = jax.jit(jax.value_and_grad(losses.dln_loss))
    for key in sorted({k.split("/")[0] for k in data.files}):
        pred, target = data[key + "/pred"], data[key + "/target"]
        value, grad = loss_and_grad(pred, target)
        out[key] = [float(value), np.asarray(grad).ravel().tolist()]
    json.dump(out, sys.stdout)
""")


def test_formulas_agree_in_float64_so_differences_are_rounding_only(tmp_path):
    # Both sides in float64 (JAX in a subprocess): what is left is float64 rounding,
    # so any difference at float32 level must come from rounding, not semantics.
    inputs, reference = {}, {}
    for seed, (name, (_, (lo, hi), _)) in enumerate(CASES.items()):
        # small non-square images: the formulas, not the sizes, are under test here
        pred, target = [z.astype(np.float64) for z in textured_pair((1, 13, 19), lo, hi, seed)]
        inputs[name + "/pred"], inputs[name + "/target"] = pred, target
        reference[name] = torch_losses(pred, target, "float64")["dln_loss"]
    np.savez(tmp_path / "pairs.npz", **inputs)
    proc = subprocess.run([sys.executable, "-c", _F64_SCRIPT, str(tmp_path / "pairs.npz")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jax_out = json.loads(proc.stdout)
    for name, (value, grad) in reference.items():
        got_value, got_grad = jax_out[name]
        rel = abs(got_value - value) / abs(value)
        assert rel <= LOSS_F64_RTOL, f"{name} float64 dln_loss {got_value!r} vs {value!r}"
        assert_relative_l2(np.reshape(got_grad, grad.shape), grad, LOSS_F64_RTOL,
                           what=f"{name} float64 gradient")


def test_port_window_is_the_torch_window_to_float32_rounding():
    """Equal bit for bit on the CPUs measured (Xeon, AMD EPYC); torch sums the 11 line
    values in float32 in the order its CPU kernel picks, while the port rounds the exact
    sum once, so on another CPU an element may be one or two float32 ulps away."""
    from port.losses import gaussian_window as port_window
    from reference_torch.losses import gaussian_window as torch_window

    a, b = port_window(), torch_window(1)[0, 0].numpy()
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_array_max_ulp(a, b, maxulp=2)
