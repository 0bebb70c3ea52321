"""The PyTorch side of the tiny encoder-decoder: (N, 3, H, W) -> (map (N, w, H, W), logits)."""

from __future__ import annotations

import torch
from torch import nn

WIDTH = 8
CLASSES = 5
SIZE = 16           # the head's Linear is sized for SIZE x SIZE inputs
GROUPS = 4
# the stride-2 conv feeding the GroupNorm is scaled down so that the group variances are
# small (~1e-3): then GroupNorm's epsilon (torch 1e-5 vs Flax's default 1e-6) is visible
DOWN_WEIGHT_SCALE = 0.1


class Bottleneck(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.down = nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1)
        self.norm = nn.GroupNorm(GROUPS, 2 * channels)
        self.act = nn.GELU()
        self.depthwise = nn.Conv2d(2 * channels, 2 * channels, 3, padding=1, groups=2 * channels)
        self.prelu = nn.PReLU()

    def forward(self, x):
        return self.prelu(self.depthwise(self.act(self.norm(self.down(x)))))


class TinyUNet(nn.Module):
    def __init__(self, width: int = WIDTH, in_channels: int = 3, classes: int = CLASSES,
                 size: int = SIZE):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1),
                                  nn.BatchNorm2d(width), nn.PReLU(width))
        self.bottleneck = Bottleneck(width)
        self.up = nn.ConvTranspose2d(2 * width, width, 3, stride=2, padding=1, output_padding=1)
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.fuse = nn.Conv2d(4 * width, width, 3, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * (size // 2) ** 2, classes))

    def forward(self, x):
        skip = self.stem(x)
        low = self.bottleneck(skip)
        merged = torch.cat([skip, self.up(low), self.upsample(low)], dim=1)
        return self.fuse(merged), self.head(low)


def build(width: int = WIDTH, seed: int = 0) -> TinyUNet:
    """The model in eval mode, with seeded weights and non-trivial BatchNorm statistics
    and PReLU slopes (so that a converter mistake in any of them shows)."""
    torch.manual_seed(seed)
    model = TinyUNet(width)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        bn = model.stem[1]
        bn.weight.uniform_(0.5, 1.5, generator=g)
        bn.bias.uniform_(-0.2, 0.2, generator=g)
        bn.running_mean.uniform_(-0.3, 0.3, generator=g)
        bn.running_var.uniform_(0.2, 2.0, generator=g)
        bn.num_batches_tracked.fill_(7)
        model.stem[2].weight.uniform_(0.05, 0.5, generator=g)
        model.bottleneck.prelu.weight.fill_(0.17)
        model.bottleneck.norm.weight.uniform_(0.5, 1.5, generator=g)
        model.bottleneck.norm.bias.uniform_(-0.2, 0.2, generator=g)
        model.bottleneck.down.weight.mul_(DOWN_WEIGHT_SCALE)
        model.bottleneck.down.bias.mul_(DOWN_WEIGHT_SCALE)
    return model.eval()
