"""The PyTorch side (timm/torchvision-style parts, written here)."""

from __future__ import annotations

import torch
from torch import nn

WIDTH, WINDOW, HEADS, CLASSES = 8, 4, 2, 5


class BatchNormAct2d(nn.BatchNorm2d):
    def __init__(self, c):
        super().__init__(c)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(super().forward(x))


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class NonDynamicallyQuantizableLinear(nn.Linear):
    pass


class WindowAttention(nn.Module):
    """Attention over one window of WINDOW x WINDOW tokens with Swin's relative bias."""

    def __init__(self, dim, window, heads):
        super().__init__()
        self.heads = heads
        self.relative_position_bias_table = nn.Parameter(
            0.5 * torch.randn((2 * window - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                            indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("relative_position_index",
                             rel[..., 0] * (2 * window - 1) + rel[..., 1])
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1)
        attn = ((q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1) + bias).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Parts(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, WIDTH, 3, 2, 1)
        self.bn = BatchNormAct2d(WIDTH)
        self.norm = LayerNorm2d(WIDTH)
        self.attn = WindowAttention(WIDTH, WINDOW, HEADS)
        self.gamma = nn.Parameter(torch.full((WIDTH,), 0.5))
        self.head = NonDynamicallyQuantizableLinear(WIDTH, CLASSES)

    def forward(self, x):                       # x: (N, 3, 2 WINDOW, 2 WINDOW)
        x = self.norm(self.bn(self.stem(x)))
        tokens = x.flatten(2).transpose(1, 2)   # one window: (N, WINDOW^2, C)
        tokens = tokens + self.gamma * self.attn(tokens)
        return self.head(tokens.mean(1))


def build() -> Parts:
    torch.manual_seed(0)
    model = Parts().eval()
    with torch.no_grad():
        model.bn.running_mean.normal_(0, 0.1)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model
