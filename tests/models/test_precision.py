"""JAX's matmul precision is passed where it matters, never set for the whole process by an import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRACING_MODULES = ("port.inference", "port.trainer", "port.tiled", "parity.engine.linen",
                   "parity.grads.model_gradients",
                   "parity.bench.backends")


def _precisions(jaxpr_text: str) -> dict[str, int]:
    return {name: jaxpr_text.count(f"Precision.{name}") for name in ("HIGHEST", "DEFAULT")}


def test_importing_the_modules_that_trace_the_port_leaves_jax_global_precision_unset():
    code = ("import importlib, jax\n"
            f"for name in {TRACING_MODULES!r}:\n"
            "    importlib.import_module(name)\n"
            "print(jax.config.jax_default_matmul_precision)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout.split()
    assert out[-1] == "None", out


@pytest.mark.parametrize("pointwise_as_dot", [True, False])
def test_every_conv_and_dot_of_the_forward_is_traced_at_the_precision_given(pointwise_as_dot):
    import jax
    import jax.numpy as jnp

    from core.config import DLNConfig
    from port.inference import make_apply
    from port.model import init_params

    cfg = DLNConfig(dim=16)
    # tracing needs the parameters' shapes only, not their values (nothing compiled)
    params = jax.eval_shape(lambda: init_params(cfg))
    x = jnp.zeros((1, 12, 12, 3), jnp.float32)
    highest = str(jax.make_jaxpr(make_apply(cfg, pointwise_as_dot))(params, x))
    default = str(jax.make_jaxpr(make_apply(cfg, pointwise_as_dot, "default"))(params, x))
    ops = highest.count("conv_general_dilated[") + highest.count("dot_general[")
    assert ops > 40, ops  # 37 ConvBlocks + the last conv + 6 FA dense layers at least
    assert "precision=None" not in highest
    assert _precisions(highest)["DEFAULT"] == 0 and _precisions(highest)["HIGHEST"] >= ops
    assert _precisions(default)["HIGHEST"] == 0 and _precisions(default)["DEFAULT"] >= ops


def test_the_train_step_is_traced_at_the_trainers_precision():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from core.config import DLNConfig
    from core.recipe import AUTHORS_RECIPE
    from port.model import init_params
    from port.trainer import adam, data_mesh, make_train_step

    cfg = DLNConfig(dim=16)
    params = jax.eval_shape(lambda: init_params(cfg))  # shapes: tracing compiles nothing
    opt_state = jax.eval_shape(
        adam(AUTHORS_RECIPE.beta1, AUTHORS_RECIPE.beta2, AUTHORS_RECIPE.eps).init, params)
    batch = jnp.asarray(np.full((1, 12, 12, 3), 0.3, np.float32))
    step = make_train_step(cfg, AUTHORS_RECIPE, data_mesh(1), "highest")
    text = str(jax.make_jaxpr(step)(params, opt_state, batch, batch, jnp.float32(1e-5)))
    assert _precisions(text)["HIGHEST"] > 80 and _precisions(text)["DEFAULT"] == 0
    assert "precision=None" not in text
