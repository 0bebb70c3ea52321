"""The PyTorch side of the tiny MLP-Mixer: (N, 3, H, W) -> logits (N, classes)."""

from __future__ import annotations

import torch
from torch import nn

DIM = 12            # channels per token (differs from TOKENS: a (N, T, D) row is unambiguous)
PATCH = 4
TOKENS = 16         # (16 / PATCH) ** 2 for 16 x 16 inputs
CLASSES = 3
LEAKY_SLOPE = 0.2


class Mlp(nn.Sequential):
    def __init__(self, features: int, hidden: int):
        super().__init__(nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, features))


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = Mlp(tokens, 2 * tokens)
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = Mlp(dim, 2 * dim)

    def forward(self, x):                                   # (N, T, D)
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class TinyMixer(nn.Module):
    def __init__(self, dim: int = DIM, tokens: int = TOKENS, classes: int = CLASSES,
                 depth: int = 2):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, PATCH, stride=PATCH)
        self.norm = nn.BatchNorm2d(dim)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)
        self.blocks = nn.ModuleList([MixerBlock(tokens, dim) for _ in range(depth)])
        self.pool_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.act(self.norm(self.patch(x)))              # (N, D, h, w)
        x = x.flatten(2).transpose(1, 2)                    # (N, T, D), tokens row-major
        for block in self.blocks:
            x = block(x)
        return self.head(self.pool_norm(x).mean(dim=1))


def build(seed: int = 0) -> TinyMixer:
    """The model in eval mode with seeded weights, non-trivial BatchNorm statistics and
    LayerNorm affine parameters (so that a converter mistake in any of them shows)."""
    torch.manual_seed(seed)
    model = TinyMixer()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5, generator=g)
        model.norm.bias.uniform_(-0.2, 0.2, generator=g)
        model.norm.running_mean.uniform_(-0.3, 0.3, generator=g)
        model.norm.running_var.uniform_(0.2, 2.0, generator=g)
        model.norm.num_batches_tracked.fill_(3)
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5, generator=g)
                module.bias.uniform_(-0.2, 0.2, generator=g)
    return model.eval()
