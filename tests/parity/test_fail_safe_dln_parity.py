"""`dln parity` fails safe on hand-made variants of DLN (dim 16, 13 x 17, batch 2): a
declared block that never runs on either side, a NaN in the final output or at one
intermediate block, and a doubled final output, each exit 1; the same
models unchanged exit 0. The variants are subclasses of the real models, swapped in for
the preset's own (parity.presets.dln.port_model / reference_model). Each test compiles
its variant (~3 s on 2 cores): the variants are few, the matrix of NaN/inf places lives
in test_fail_safe_pass_rule.py."""

from __future__ import annotations

import json

import pytest

from dln.cli import main
from parity.presets import dln

ARGS = ["parity", "--variant", "dim=16", "--size", "13x17", "--batch", "2"]


def _port_variant(kind: str):
    import jax.numpy as jnp

    from port.model import DLN

    class Variant(DLN):
        def residual(self, x):
            if kind != "feature-inline":
                return super().residual(x)
            # every number as in DLN, but `feature` is never called as a module: its
            # children run, the declared block itself has no output on the JAX side
            xs = jnp.concatenate([(x - 0.5) * 2, jnp.max(x, axis=-1, keepdims=True)], -1)
            f1 = self.feat2(self.feat1(xs))
            o1 = self.feat_out_1(f1)
            o2 = self.feat_out_2(jnp.concatenate([f1, o1], axis=-1))
            o3 = self.feat_out_3(jnp.concatenate([f1, o1, o2], axis=-1))
            g = jnp.concatenate([f1, o1, o2, o3], axis=-1)
            return self.out(self.feature.act(self.feature.conv(g)))

        def __call__(self, x):
            y = super().__call__(x)
            if kind == "doubled":
                return 2 * y
            if kind == "nan":
                return y.at[1, 3, 4, 0].set(jnp.nan)
            return y

    return lambda config, backend="jax": Variant(config)


def _torch_variant(kind: str):
    import torch

    from reference_torch.model import DLN

    class Variant(DLN):
        def residual(self, x):
            if kind != "feature-forward":
                return super().residual(x)
            xs = torch.cat([(x - 0.5) * 2, torch.amax(x, dim=1, keepdim=True)], dim=1)
            f1 = self.feat2(self.feat1(xs))
            o1 = self.feat_out_1(f1)
            o2 = self.feat_out_2(torch.cat([f1, o1], dim=1))
            o3 = self.feat_out_3(torch.cat([f1, o1, o2], dim=1))
            # forward() instead of a call: the same numbers, but no hook sees `feature`
            return self.out(self.feature.forward(torch.cat([f1, o1, o2, o3], dim=1)))

    def build(ckpt):
        model = Variant(ckpt.config)
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in
                               ckpt.torch_state.items()}, strict=True)
        return model.eval()

    return build


def _parity(tmp_path, capsys) -> tuple[int, dict, str]:
    code = main([*ARGS, "--report", str(tmp_path / "r")])
    out = capsys.readouterr().out
    return code, json.loads((tmp_path / "r" / "report.json").read_text()), out


def test_the_unchanged_models_pass(tmp_path, capsys):
    code, report, out = _parity(tmp_path, capsys)
    assert code == 0 and report["passed"], out


@pytest.mark.parametrize("kind", ["doubled", "nan"])  # inf: test_fail_safe_verdicts
def test_a_port_subclass_that_changes_its_final_output_fails(tmp_path, capsys, monkeypatch,
                                                              kind):
    monkeypatch.setattr(dln, "port_model", _port_variant(kind))
    code, report, out = _parity(tmp_path, capsys)
    assert code == 1 and report["first_divergence"] == "prediction", out
    assert [r["name"] for r in report["rows"] if r["status"] != "pass"] == ["prediction"]


def test_a_declared_block_that_never_runs_in_the_port_fails(tmp_path, capsys, monkeypatch):
    """Every number agrees; the block itself is missing on the JAX side."""
    monkeypatch.setattr(dln, "port_model", _port_variant("feature-inline"))
    code, report, out = _parity(tmp_path, capsys)
    statuses = {r["name"]: r["status"] for r in report["rows"]}
    assert code == 1 and statuses["feature"] == "missing in JAX", out
    assert [r["name"] for r in report["rows"] if r["status"] != "pass"] == ["feature"]


def test_a_declared_block_that_never_runs_in_the_reference_fails(tmp_path, capsys,
                                                                 monkeypatch):
    """A chosen torch module with no output is a failing row, never a silently shorter
    report (the Flax block's output alone would be an informational row)."""
    monkeypatch.setattr(dln, "reference_model", _torch_variant("feature-forward"))
    code, report, out = _parity(tmp_path, capsys)
    not_passing = [(r["name"], r["status"]) for r in report["rows"] if r["status"] != "pass"]
    assert code == 1 and not_passing == [("feature", "missing in torch"),
                                         ("feature", "only in flax")], out


def test_a_nan_in_one_intermediate_block_alone_fails(tmp_path, capsys, monkeypatch):
    """A NaN put into one element of the input of feat_out_2.local_weight2_1 on the JAX
    side (the frontend's own input change, as the zoo uses it): every earlier block
    passes and the first divergence is that block."""
    import jax.numpy as jnp

    from parity.engine.prepared import PreparedPort

    real = PreparedPort.compare

    def compare(self, variables=None, context=None, flax_model=None, jit=True):
        nan_in = self.frontend.inputs_changed(
            "feat_out_2/local_weight2_1", lambda x: x.at[0, 1, 1, 1].set(jnp.nan))
        return real(self, variables, nan_in, flax_model, jit)

    monkeypatch.setattr(PreparedPort, "compare", compare)
    code, report, out = _parity(tmp_path, capsys)
    assert code == 1 and report["first_divergence"] == "feat_out_2.local_weight2_1", out
