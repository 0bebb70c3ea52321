"""The Flax Linen port of torch_model.py. `auto_names=True` leaves every layer to Flax's
automatic names (Conv_0, BatchNorm_0, BasicBlock_0, ...) and builds and runs the projection
shortcut first, as third-party ports do; the rest are planted defects for the tests:
`pool_padding="SAME"` (pads (0, 1) where torchvision pads (1, 1)), `bn_eps`,
`bn_momentum` (Flax's 0.99 where torch's 0.1 is Flax's 0.9; seen only with --train)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from parity.examples.resnet.torch_model import SMALL


class BasicBlock(nn.Module):
    planes: int
    stride: int = 1
    project: bool = False
    auto_names: bool = False
    bn_eps: float = 1e-5
    bn_momentum: float = 0.9

    def _name(self, name):
        return None if self.auto_names else name

    @nn.compact
    def __call__(self, x, train: bool = False):
        def norm(name):
            return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                                epsilon=self.bn_eps, name=self._name(name))

        def conv(features, kernel, stride, pad, name):
            return nn.Conv(features, (kernel, kernel), (stride, stride),
                           padding=((pad, pad), (pad, pad)), use_bias=False,
                           name=self._name(name))

        identity = x
        if self.project and self.auto_names:   # the shortcut first: Conv_0, BatchNorm_0
            identity = norm("downsample_1")(conv(self.planes, 1, self.stride, 0,
                                                 "downsample_0")(x))
        out = nn.relu(norm("bn1")(conv(self.planes, 3, self.stride, 1, "conv1")(x)))
        out = norm("bn2")(conv(self.planes, 3, 1, 1, "conv2")(out))
        if self.project and not self.auto_names:
            identity = norm("downsample_1")(conv(self.planes, 1, self.stride, 0,
                                                 "downsample_0")(x))
        return nn.relu(out + identity)


class ResNet(nn.Module):
    layers: tuple = (2, 2, 2, 2)
    width: int = 64
    classes: int = 1000
    auto_names: bool = False
    pool_padding: object = ((1, 1), (1, 1))
    bn_eps: float = 1e-5
    bn_momentum: float = 0.9

    def _name(self, name):
        return None if self.auto_names else name

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                    name=self._name("conv1"))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                         epsilon=self.bn_eps, name=self._name("bn1"))(x)
        x = nn.max_pool(nn.relu(x), (3, 3), (2, 2), padding=self.pool_padding)
        inplanes = self.width
        for i, blocks in enumerate(self.layers):
            planes = self.width * 2 ** i
            for b in range(blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                x = BasicBlock(planes, stride, stride != 1 or inplanes != planes,
                               self.auto_names, self.bn_eps, self.bn_momentum,
                               name=self._name(f"layer{i + 1}_{b}"))(x, train)
                inplanes = planes
        return nn.Dense(self.classes, name=self._name("fc"))(jnp.mean(x, axis=(1, 2)))


def build() -> ResNet:
    return ResNet(**SMALL)


def build_auto_names() -> ResNet:
    return ResNet(**SMALL, auto_names=True)


def build_resnet18() -> ResNet:
    return ResNet()


def build_pool_same() -> ResNet:
    return ResNet(**SMALL, pool_padding="SAME")


def build_bn_eps() -> ResNet:
    return ResNet(**SMALL, bn_eps=1e-3)


def build_bn_momentum() -> ResNet:
    return ResNet(**SMALL, bn_momentum=0.99)
