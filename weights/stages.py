"""DLN stage by stage: the stage table of exact tiled inference, read off the tensor table.

DLN is local except for its three feature-aggregation means (each LBP's FA averages
its input over height and width), so core.tiling can run it in four stages, a new
one wherever a mean over the whole image is needed:

  stage        reads                                   writes   halo
  f1           the image                               dim      feat1 + feat2
  lbp1         f1 (dim) and its mean                   dim      FA outlayer, then
  lbp2         f1, o1 (2 dim) and their mean           dim        L1 -> D -> L2 (three
  lbp3+final   f1, o1, o2 (3 dim), their mean, image   output     convs each, chained);
                                                                  local weights in
                                                                  parallel; + feature + out

The last stage runs the third LBP over its tile plus the final convolutions' halo, then
feature and out on the o3 it just computed: o3 is never stored and the maps are read
three times in all (64 + 128 + 192 channels, not 64 + 128 + 192 + 256 with o3 written).
Each halo is the stage's receptive radius, the sum of (k - 1) / 2 over the longest
chain of its k x k convolutions (all zero-padded to keep the size), taken from the
kernel sizes of weights.spec's tensor table, the one description of DLN's modules
that both models are tested against: 2, 9, 9 and 9 + 2 pixels for the authors' network.
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
    for i, lbp in enumerate(LBP_NAMES[:-1]):
        stages.append(Stage(f"lbp{i + 1}", lbp_halo(lbp), reads=(i + 1) * dim, image=False,
                            mean=True, writes=dim))
    # the final convolutions need no mean: they run on the third LBP's tiles (o3 over
    # the tile plus their halo), so o3 is never stored and f1, o1, o2 are read once
    last, final = lbp_halo(LBP_NAMES[-1]), r["feature"] + r["out"]
    stages.append(Stage(f"lbp{len(LBP_NAMES)}+final", last + final,
                        reads=len(LBP_NAMES) * dim, image=True, mean=True, writes=0,
                        parts=((f"lbp{len(LBP_NAMES)}", last), ("final", final))))
    return tuple(stages)
