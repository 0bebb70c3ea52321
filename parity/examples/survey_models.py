"""Compact PyTorch models with the structures of popular torchvision and timm networks, for
the converter survey (tests/parity/test_converter_survey.py): each converts, or is refused
naming the exact module, its kind and its tensors. Tiny widths; written here (the real
packages do not import with the CPU torch of this project)."""

from __future__ import annotations

import torch
from torch import nn

from parity.examples.resnet.torch_model import ResNet
from parity.examples.vit.torch_model import VisionTransformer


# ---- torchvision-style ------------------------------------------------------------------
class Bottleneck(nn.Module):           # resnet50
    def __init__(self, cin, width, groups=1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, 4 * width, 1, bias=False), nn.BatchNorm2d(4 * width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(nn.Conv2d(cin, 4 * width, 1, bias=False),
                                        nn.BatchNorm2d(4 * width))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.downsample(x))


class ConvNormActivation(nn.Sequential):   # torchvision.ops.Conv2dNormActivation
    def __init__(self, cin, cout, k=3, stride=1, groups=1, act=nn.Hardswish, eps=1e-3):
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout, eps=eps), act())


class SqueezeExcitation(nn.Module):
    def __init__(self, c, squeeze, gate=nn.Hardsigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.activation, self.scale_activation = nn.ReLU(), gate()

    def forward(self, x):
        s = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return x * self.scale_activation(s)


class InvertedResidual(nn.Module):         # mobilenet_v3 / efficientnet MBConv
    def __init__(self, c, expand, act=nn.Hardswish, gate=nn.Hardsigmoid):
        super().__init__()
        self.block = nn.Sequential(ConvNormActivation(c, expand, 1, act=act),
                                   ConvNormActivation(expand, expand, 3, groups=expand, act=act),
                                   SqueezeExcitation(expand, 4, gate),
                                   ConvNormActivation(expand, c, 1, act=nn.Identity))

    def forward(self, x):
        return x + self.block(x)


def mobilenet_v3_like():
    return nn.Sequential(ConvNormActivation(3, 8, stride=2), InvertedResidual(8, 16),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Sequential(nn.Linear(8, 16), nn.Hardswish(), nn.Dropout(0.2),
                                       nn.Linear(16, 5)))


def efficientnet_like():
    return nn.Sequential(ConvNormActivation(3, 8, stride=2, act=nn.SiLU, eps=1e-5),
                         InvertedResidual(8, 16, nn.SiLU, nn.Sigmoid),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


class NonDynamicallyQuantizableLinear(nn.Linear):   # torchvision's out_proj kind
    pass


class EncoderBlock(nn.Module):             # torchvision vit_b_16 encoder layer
    def __init__(self, dim, heads):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.self_attention(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TorchvisionViT(nn.Module):
    def __init__(self, dim=16, heads=2, tokens=16):
        super().__init__()
        self.conv_proj = nn.Conv2d(3, dim, 4, 4)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder = nn.Module()
        self.encoder.pos_embedding = nn.Parameter(torch.randn(1, tokens + 1, dim))
        self.encoder.layers = nn.Sequential(EncoderBlock(dim, heads))
        self.encoder.ln = nn.LayerNorm(dim, eps=1e-6)
        self.heads = nn.Sequential(nn.Linear(dim, 5))


class DenseLayer(nn.Module):               # densenet
    def __init__(self, cin, growth):
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU()
        self.conv1 = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv1(self.relu1(self.norm1(x)))], 1)


def densenet_like():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), DenseLayer(8, 4), DenseLayer(12, 4),
                         nn.BatchNorm2d(16), nn.Conv2d(16, 8, 1), nn.AvgPool2d(2, 2))


def vgg_like():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 8 * 8, 16), nn.ReLU(True),
                         nn.Dropout(), nn.Linear(16, 5))


class Fire(nn.Module):                     # squeezenet
    def __init__(self, cin, s, e):
        super().__init__()
        self.squeeze, self.expand1x1 = nn.Conv2d(cin, s, 1), nn.Conv2d(s, e, 1)
        self.expand3x3 = nn.Conv2d(s, e, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.squeeze(x))
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], 1)


# ---- timm-style -----------------------------------------------------------------------
class LayerNorm2d(nn.LayerNorm):           # timm: LayerNorm over the channels of NCHW
    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        return super().forward(x).permute(0, 3, 1, 2)


class BatchNormAct2d(nn.BatchNorm2d):      # timm: BatchNorm2d + activation in one module
    def __init__(self, c, act=nn.ReLU):
        super().__init__(c)
        self.act = act()

    def forward(self, x):
        return self.act(super().forward(x))


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))   # layer scale

    def forward(self, x):
        y = self.norm(self.conv_dw(x).permute(0, 2, 3, 1))
        return x + (self.mlp(y) * self.gamma).permute(0, 3, 1, 2)


def convnext_like():
    return nn.Sequential(nn.Conv2d(3, 8, 4, 4), LayerNorm2d(8, eps=1e-6), ConvNeXtBlock(8))


class WindowAttention(nn.Module):          # swin
    def __init__(self, dim, window, heads):
        super().__init__()
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                            indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * window - 1) + rel[..., 1])
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)


class SwinBlock(nn.Module):
    def __init__(self, dim=8, window=4, heads=2):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))


class DistilledViT(VisionTransformer):    # deit: a distillation token and head
    def __init__(self):
        super().__init__(image=16, patch=4, dim=16, depth=1, heads=2, classes=5)
        self.dist_token = nn.Parameter(torch.zeros(1, 1, 16))
        self.head_dist = nn.Linear(16, 5)


class LeViTAttention(nn.Module):           # levit: attention biases and an index buffer
    def __init__(self, dim=8, heads=2, resolution=3):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attention_biases = nn.Parameter(torch.zeros(heads, resolution ** 2))
        self.register_buffer("attention_bias_idxs",
                             torch.arange(resolution ** 4).view(resolution ** 2, -1)
                             % resolution ** 2, persistent=False)


class MixerBlock(nn.Module):               # mlp-mixer
    def __init__(self, tokens=16, dim=8):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_tokens = nn.Sequential(nn.Linear(tokens, 8), nn.GELU(), nn.Linear(8, tokens))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_channels = nn.Sequential(nn.Linear(dim, 16), nn.GELU(), nn.Linear(16, dim))


# ---- other common structures ---------------------------------------------------------
def cyclegan_generator(affine: bool = False):
    return nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, 8, 7),
                         nn.InstanceNorm2d(8, affine=affine), nn.ReLU(True),
                         nn.Conv2d(8, 16, 3, 2, 1), nn.InstanceNorm2d(16, affine=affine),
                         nn.ReLU(True),
                         nn.ConvTranspose2d(16, 8, 3, 2, 1, output_padding=1),
                         nn.InstanceNorm2d(8, affine=affine), nn.ReLU(True),
                         nn.ReflectionPad2d(3), nn.Conv2d(8, 3, 7), nn.Tanh())


def unet_like():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.SiLU(),
                         nn.ConvTranspose2d(8, 4, 2, 2), nn.PReLU(4), nn.PixelShuffle(2))


class TokenTransformer(nn.Module):         # llama-like: embedding, RMSNorm
    def __init__(self, vocab=32, dim=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.RMSNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.out = nn.Linear(dim, vocab, bias=False)


class RecurrentHead(nn.Module):            # a conv net with an LSTM head: refused
    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3)
        self.rnn = nn.LSTM(4, 4)


def instance_norm_with_running_stats():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4, track_running_stats=True))


def bilinear_head():
    return nn.Sequential(nn.Flatten(), nn.Bilinear(4, 4, 2))


SURVEY = {
    "resnet18": lambda: ResNet(width=8, classes=5),
    "resnet50": lambda: nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8),
                                      Bottleneck(8, 4)),
    "resnext50": lambda: nn.Sequential(Bottleneck(3, 8, groups=4)),
    "mobilenet_v3_small": mobilenet_v3_like,
    "efficientnet_b0": efficientnet_like,
    "densenet121": densenet_like,
    "vgg11": vgg_like,
    "squeezenet1_0": lambda: nn.Sequential(nn.Conv2d(3, 8, 3), Fire(8, 4, 8)),
    "vit_b_16 (torchvision)": TorchvisionViT,
    "vit_tiny_patch16 (timm)": lambda: VisionTransformer(image=16, patch=4, dim=16, depth=1,
                                                         heads=2, classes=5),
    "deit_tiny_distilled (timm)": DistilledViT,
    "convnext_tiny (timm)": convnext_like,
    "swin_tiny (timm)": SwinBlock,
    "levit (timm)": LeViTAttention,
    "mixer_b16 (timm)": MixerBlock,
    "resnet with BatchNormAct2d (timm)": lambda: nn.Sequential(nn.Conv2d(3, 8, 3),
                                                               BatchNormAct2d(8)),
    "cyclegan generator": cyclegan_generator,
    "cyclegan generator, affine InstanceNorm": lambda: cyclegan_generator(affine=True),
    "unet": unet_like,
    "token transformer (RMSNorm, MultiheadAttention)": TokenTransformer,
    "conv + LSTM head": RecurrentHead,
    "InstanceNorm tracking running stats": instance_norm_with_running_stats,
    "Bilinear head": bilinear_head,
}
