"""The Flax NNX DLN stage by stage: exact tiled and bucketed inference, as port/tiled.py
does it for the Linen port.

`NnxStages` is port.tiled.JaxStages on the NNX model: the same stage table, the same
jitted pure functions of (params, tiles) and the same whole-image runner
(port.tiled.JaxWholeImage: size buckets with masks, portrait images transposed with
every kernel's spatial axes swapped, batches), because the NNX state's paths are the
Linen port's parameter names (port/nnx_model.py), so the one params tree, and its
transposed copy, serve both. What runs inside the traces is the NNX model's own code:
- the graph is split once (port.nnx_inference.inference_graph: 1 x 1 convolutions as
  matrix products when asked); each traced stage merges it with the params
  (port.nnx_inference.merge_params), so a call is a plain jit dispatch, no graph walk
  and no `nnx.jit`;
- on that merged copy, which lives only inside the trace, every `nnx.Conv` attribute is
  replaced by a `MaskedConv` around it: the conv's own `__call__` runs (bias included)
  and its output is multiplied by the validity mask, the NNX twin of the Linen
  interceptor (NNX has none), so zeros outside the image reproduce zero padding;
- the stages call the NNX model's submodules: `feat1`, `feat2`, each LBP's FA layers
  `fusion.fc_0`, `fusion.fc_2`, `fusion.outlayer` (with the FA's mean given: over the
  whole image, or the masked mean of a bucket) and its lightening operations, `feature`
  and `out`.
"""

from __future__ import annotations

import jax
from flax import nnx

from port.inference import PARITY_PRECISION
from port.nnx_inference import inference_graph, make_nnx_apply, merge_params
from port.tiled import JaxStages, lbp_after_fusion
from weights.stages import LBP_NAMES


class MaskedConv(nnx.Module):
    """An nnx.Conv whose output (bias included) is multiplied by a validity mask."""

    def __init__(self, conv: nnx.Conv, mask):
        self.conv = conv
        self.mask = mask

    def __call__(self, x):
        return self.conv(x) * self.mask


def mask_convolutions(model: nnx.Module, mask) -> int:
    """Wrap every nnx.Conv held as an attribute of a module of `model` in a MaskedConv
    (in place: meant for a copy merged inside a trace). Returns how many were wrapped."""
    wrapped = 0
    for _, module in list(nnx.iter_modules(model)):
        if isinstance(module, MaskedConv):
            continue
        for name, value in list(vars(module).items()):
            if isinstance(value, nnx.Conv):
                setattr(module, name, MaskedConv(value, mask))
                wrapped += 1
    return wrapped


def _nnx_lbp(module, index: int, z, mean):
    """One NNX LBP with its FA mean given: (N, h, w, cin) and (N, cin) -> (N, h, w, dim)."""
    lbp = getattr(module, LBP_NAMES[index])
    fusion = lbp.fusion
    w = nnx.sigmoid(fusion.fc_2(nnx.relu(fusion.fc_0(mean))))
    f = fusion.outlayer(z * w[:, None, None, :] + z)
    return lbp_after_fusion(lbp, f)


class NnxStages(JaxStages):
    """core.tiling.StageRunner (and bucket runner) for the NNX port."""

    def _build_model(self) -> None:
        self._graph, self._abstract = inference_graph(self.config, self.pointwise_as_dot)

    def _apply(self, params, mask, fn, *args):
        # traced in true float32 ("highest"), as port.nnx_inference.make_nnx_apply
        with jax.default_matmul_precision(PARITY_PRECISION):
            model = merge_params(self._graph, self._abstract, params)
            mask_convolutions(model, mask)
            return fn(model, *args)

    def _lbp(self, module, index: int, z, mean):
        return _nnx_lbp(module, index, z, mean)

    def plain_apply(self):
        return make_nnx_apply(self.config, pointwise_as_dot=self.pointwise_as_dot)
