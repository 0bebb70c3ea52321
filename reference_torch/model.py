"""DLN in PyTorch, key for key with the authors' checkpoints.

Module names are the authors' (`feat_out_2.conv1_1.conv_Encoder.conv`), so their
state dicts load with strict=True once DataParallel's `module.` prefix is dropped.
The switches of core.config.DLNConfig select the paper's variants.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from core.config import FA_REDUCTION, DLNConfig


class ConvBlock(nn.Module):
    """k x k convolution with bias, zero padding, then PReLU with one shared slope."""

    def __init__(self, cin: int, cout: int, kernel: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=1, padding=padding, bias=True)
        self.act = nn.PReLU(num_parameters=1, init=0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class FeatureAggregation(nn.Module):
    """FA: channel attention y = z * sigmoid(W2 relu(W1 mean(z))) + z, then a 1x1 ConvBlock."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        squeezed = cin // FA_REDUCTION
        self.fc = nn.Sequential(
            nn.Linear(cin, squeezed, bias=False), nn.ReLU(inplace=True),
            nn.Linear(squeezed, cin, bias=False), nn.Sigmoid())
        self.outlayer = ConvBlock(cin, cout, 1, 0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.fc(z.mean(dim=(2, 3)))[:, :, None, None]
        return self.outlayer(z * w + z)


class LighteningOp(nn.Module):
    """Encoder / offset / decoder; lightening adds the offset, darkening subtracts it."""

    def __init__(self, dim: int, darken: bool):
        super().__init__()
        self.darken = darken
        self.conv_Encoder = ConvBlock(dim, dim // 2, 3, 1)
        self.conv_Offset = ConvBlock(dim // 2, dim // 2, 3, 1)
        self.conv_Decoder = ConvBlock(dim // 2, dim, 3, 1)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        e = self.conv_Encoder(v)
        o = self.conv_Offset(e)
        return self.conv_Decoder(e - o if self.darken else e + o)


class LBP(nn.Module):
    """Lightening back-projection block: FA, L1, D, residual, L2."""

    def __init__(self, cin: int, dim: int, residual_sign: str):
        super().__init__()
        self.residual_sign = residual_sign
        self.fusion = FeatureAggregation(cin, dim)
        self.conv1_1 = LighteningOp(dim, darken=False)
        self.conv2 = LighteningOp(dim, darken=True)
        self.conv3 = LighteningOp(dim, darken=False)
        self.local_weight1_1 = ConvBlock(dim, dim, 1, 0)
        self.local_weight2_1 = ConvBlock(dim, dim, 1, 0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        f = self.fusion(z)
        hr = self.conv1_1(f)
        lr = self.conv2(hr)
        if self.residual_sign == "code":
            r = self.local_weight1_1(f) - lr
        else:
            r = lr - self.local_weight1_1(f)
        return self.local_weight2_1(hr) + self.conv3(r)


class DLN(nn.Module):
    """The Deep Lightening Network; input and output NCHW RGB in [0, 1]."""

    def __init__(self, config: DLNConfig = DLNConfig()):
        super().__init__()
        self.config = config
        dim = config.dim
        self.feat1 = ConvBlock(config.input_channels, 2 * dim, 3, 1)
        self.feat2 = ConvBlock(2 * dim, dim, 3, 1)
        self.feat_out_1 = LBP(dim, dim, config.residual_sign)
        self.feat_out_2 = LBP(2 * dim, dim, config.residual_sign)
        self.feat_out_3 = LBP(3 * dim, dim, config.residual_sign)
        self.feature = ConvBlock(4 * dim, dim, 3, 1)
        self.out = nn.Conv2d(dim, 3, 3, stride=1, padding=1, bias=True)
        self.reset_parameters_like_authors()

    def reset_parameters_like_authors(self) -> None:
        """Kaiming-normal conv weights (fan_in, gain sqrt 2), zero conv biases,
        torch-default Linear weights, PReLU 0.25 (the authors' initialisation)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """P(x): the network's residual output before the gamma-weighted skip."""
        xs = (x - 0.5) * 2
        if self.config.brightness:
            brightness = torch.amax(x, dim=1, keepdim=True)
            xs = torch.cat([xs, brightness], dim=1)
        f1 = self.feat2(self.feat1(xs))
        o1 = self.feat_out_1(f1)
        o2 = self.feat_out_2(torch.cat([f1, o1], dim=1))
        o3 = self.feat_out_3(torch.cat([f1, o1, o2], dim=1))
        return self.out(self.feature(torch.cat([f1, o1, o2, o3], dim=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.config.gamma * self.residual(x)
