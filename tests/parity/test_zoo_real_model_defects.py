"""The zoo entries for real models, each caught at its site on the examples: attention
scale and qkv order (ViT), token transpose (a ViT feature extractor), pooling padding
(ResNet), reflect padding and InstanceNorm eps (CycleGAN), momentum (ResNet, training
mode); and a blind spot counts as missed."""

from __future__ import annotations

import numpy as np

from parity import prepare_port, run_zoo
from parity.examples.cyclegan import flax_model as gflax, torch_model as gtorch
from parity.examples.resnet import flax_model as rflax, torch_model as rtorch
from parity.examples.vit import flax_model as vflax, torch_model as vtorch
from parity.zoo.catalogue import Defect, Mutation, Site
from parity.zoo.mutation import BELOW, CAUGHT

X16 = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)


def statuses(zoo) -> dict:
    return {(r.defect, r.site): (r.status, r.first_divergence) for r in zoo.results}


def test_vit_attention_and_token_defects_are_caught_at_their_sites():
    zoo = run_zoo(prepare_port(vtorch.build(), vflax.build(), X16),
                  names=["attention-scale", "qkv-split-order"], max_sites=1)
    got = statuses(zoo)     # one seeded site of the two blocks' qkv per defect
    assert {k[0] for k in got} == {"attention-scale", "qkv-split-order"}
    assert all(status == CAUGHT and where == site for (_, site), (status, where) in got.items())
    zoo = run_zoo(prepare_port(vtorch.build_features_square(), vflax.build_features_square(),
                               X16), names=["token-transpose"])
    assert [r.status for r in zoo.results] == [CAUGHT]


def test_pooling_padding_and_momentum_defects_are_caught_at_their_modules():
    # 64 x 64: BatchNorm in training mode on the 2 x 2 maps of layer4 (n = 8 per channel)
    x = np.random.default_rng(1).random((2, 3, 64, 64), dtype=np.float32)
    port = prepare_port(rtorch.build(), rflax.build(), x, training=True)
    zoo = run_zoo(port, names=["pool-padding", "batchnorm-momentum"], max_sites=2)
    got = statuses(zoo)
    assert got[("pool-padding", "maxpool ((root): max_pool call 1)")] == (CAUGHT, "maxpool")
    momentum = [v for k, v in got.items() if k[0] == "batchnorm-momentum"]
    assert len(momentum) == 2 and all(status == CAUGHT for status, _ in momentum)


def test_cyclegan_padding_and_instancenorm_defects_are_caught():
    port = prepare_port(gtorch.build_affine(), gflax.build_affine(), X16)
    zoo = run_zoo(port, names=["reflect-as-zero-pad", "instancenorm-eps"], max_sites=2)
    assert zoo.results and all(r.status == CAUGHT for r in zoo.results), zoo.summary()


def test_a_mutant_neither_the_numbers_nor_the_diff_see_counts_as_missed():
    port = prepare_port(vtorch.build(), vflax.build(), X16)

    def tiny(port, site):   # a change far below the tolerance, in no hyperparameter
        flat = port.frontend.flat(port.variables)
        key = "params/head/bias"
        from parity.zoo.catalogue import replaced
        return Mutation(replaced(port, {key: np.asarray(flat[key]) + np.float32(1e-9)}))
    blind = Defect("blind", "a change too small to see", ("Linear",),
                   lambda port: [Site("head", "head", "head")], tiny)
    zoo = run_zoo(port, catalogue={"blind": blind})
    assert [r.status for r in zoo.results] == [BELOW]
    assert zoo.score == 0.0 and zoo.missed and "100%" not in zoo.summary()


def _sub_pixel_models(scale: int = 2):
    """An ESPCN-style head: a conv to 3 * r^2 channels, then torch's PixelShuffle, and its
    Linen port with a depth-to-space module in torch's (C, r, r) channel order."""
    import flax.linen as nn
    import jax.numpy as jnp
    import torch

    class TorchNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 3 * scale * scale, 3, padding=1)
            self.shuffle = torch.nn.PixelShuffle(scale)

        def forward(self, x):
            return self.shuffle(self.conv(x))

    class DepthToSpace(nn.Module):
        r: int

        def __call__(self, x):
            n, h, w, channels = x.shape
            c = channels // (self.r * self.r)
            x = x.reshape(n, h, w, c, self.r, self.r)          # torch: (C, r, r)
            x = jnp.transpose(x, (0, 1, 4, 2, 5, 3))
            return x.reshape(n, h * self.r, w * self.r, c)

    class FlaxNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(3 * scale * scale, (3, 3), padding=1, name="conv")(x)
            return DepthToSpace(scale, name="shuffle")(x)

    return TorchNet().eval(), FlaxNet()


def test_pixel_shuffle_channel_order_is_caught_at_the_shuffle():
    torch_model, flax_model = _sub_pixel_models()
    port = prepare_port(torch_model, flax_model, X16)
    assert port.compare().passed
    zoo = run_zoo(port, names=["pixelshuffle-order"])
    assert statuses(zoo) == {("pixelshuffle-order", "shuffle"): (CAUGHT, "shuffle")}, \
        zoo.summary()
