"""DLN stage by stage: the stage table of exact tiled inference, read off the tensor table.

DLN is local except for its three feature-aggregation means (each LBP's FA averages
its input over height and width), so core.tiling can run it in five stages:

  stage   reads                                writes   halo
  f1      the image                            dim      feat1 + feat2
  lbp1    f1 (dim) and its mean                dim      FA outlayer, then L1 -> D -> L2
  lbp2    f1, o1 (2 dim) and their mean        dim        (three convs each, chained);
  lbp3    f1, o1, o2 (3 dim) and their mean    dim        local weights in parallel
  final   f1, o1, o2, o3 (4 dim), the image    output   feature + out

Each halo is the stage's receptive radius, the sum of (k - 1) / 2 over the longest
chain of its k x k convolutions (all zero-padded to keep the size), taken from the
kernel sizes of weights.spec's tensor table, the one description of DLN's modules
that both models are tested against: 2, 9 and 2 pixels for the authors' network.
port.tiled and reference_torch.tiled implement the stages; core.tiling runs them.
"""

from __future__ import annotations

from core.config import DLNConfig
from core.tiling import Stage
from weights.spec import LBP_OPS, tensor_specs

LBP_NAMES = ("feat_out_1", "feat_out_2", "feat_out_3")
OP_CONVS = ("conv_Encoder", "conv_Offset", "conv_Decoder")


def _radii(config: DLNConfig) -> dict[str, int]:
    """Module name -> (k - 1) // 2 of its convolution."""
    radii = {}
    for spec in tensor_specs(config):
        if spec.kind == "conv":
            module = spec.torch_name[:-len(".weight")].removesuffix(".conv")
            radii[module] = (spec.torch_shape[-1] - 1) // 2
    return radii


def dln_stages(config: DLNConfig) -> tuple[Stage, ...]:
    """The stage table of a DLN with this config (core.tiling.Stage rows)."""
    r = _radii(config)
    dim = config.dim

    def op(lbp: str, name: str) -> int:
        return sum(r[f"{lbp}.{name}.{conv}"] for conv in OP_CONVS)

    def lbp_halo(lbp: str) -> int:
        l1, d, l2 = (op(lbp, name) for name in LBP_OPS)
        f = r[f"{lbp}.fusion.outlayer"]
        residual = max(r[f"{lbp}.local_weight1_1"], l1 + d)      # lambda1 f - D(L1 f)
        return f + max(l1 + r[f"{lbp}.local_weight2_1"], residual + l2)

    stages = [Stage("f1", r["feat1"] + r["feat2"], reads=0, image=True, mean=False,
                    writes=dim)]
    for i, lbp in enumerate(LBP_NAMES):
        stages.append(Stage(f"lbp{i + 1}", lbp_halo(lbp), reads=(i + 1) * dim, image=False,
                            mean=True, writes=dim))
    stages.append(Stage("final", r["feature"] + r["out"], reads=4 * dim, image=True,
                        mean=False, writes=0))
    return tuple(stages)
