"""The PyTorch side: the structure of CycleGAN's ResnetGenerator (names model.0, model.1,
... of one nn.Sequential; ResnetBlock.conv_block)."""

from __future__ import annotations

import torch
from torch import nn

SMALL = dict(width=8, blocks=1)


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, affine: bool):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim, affine=affine),
            nn.ReLU(True), nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3),
            nn.InstanceNorm2d(dim, affine=affine))

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    def __init__(self, width: int = 64, blocks: int = 9, affine: bool = False):
        super().__init__()
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(3, width, 7),
                  nn.InstanceNorm2d(width, affine=affine), nn.ReLU(True)]
        for i in range(2):
            c = width * 2 ** i
            layers += [nn.Conv2d(c, 2 * c, 3, 2, 1), nn.InstanceNorm2d(2 * c, affine=affine),
                       nn.ReLU(True)]
        layers += [ResnetBlock(4 * width, affine) for _ in range(blocks)]
        for i in range(2):
            c = width * 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1),
                       nn.InstanceNorm2d(c // 2, affine=affine), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def build() -> ResnetGenerator:
    torch.manual_seed(0)
    return ResnetGenerator(**SMALL).eval()


def build_affine() -> ResnetGenerator:
    torch.manual_seed(0)
    model = ResnetGenerator(**SMALL, affine=True).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.InstanceNorm2d):
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
    return model
