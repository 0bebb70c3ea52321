"""The network's arithmetic cost, counted analytically from the weight table.

Convention (the one behind the facts' "about 332 GFLOP per 600 x 400 image"): a
multiply-add counts as 2 FLOP; every convolution and every dense layer is counted,
nothing else (biases, PReLU, concatenations, the channel means of the FA blocks and
the final skip add are a few FLOP per element, under 0.1% of the total).

Every DLN convolution has stride 1 and 'same' padding, so a conv whose torch weight
has shape (O, I, kh, kw) costs 2 * O * I * kh * kw multiply-adds per output pixel,
H * W pixels per image; a dense layer (O, I) costs 2 * O * I per image.
"""

from __future__ import annotations

from core.config import DLNConfig
from weights.spec import tensor_specs


def layer_flops(config: DLNConfig, height: int, width: int) -> dict[str, int]:
    """FLOP per image of every conv and dense layer, keyed by its torch weight name."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    pixels = height * width
    costs: dict[str, int] = {}
    for spec in tensor_specs(config):
        if spec.kind == "conv":
            out_ch, in_ch, kh, kw = spec.torch_shape
            costs[spec.torch_name] = 2 * out_ch * in_ch * kh * kw * pixels
        elif spec.kind == "dense":
            out_f, in_f = spec.torch_shape
            costs[spec.torch_name] = 2 * out_f * in_f
    return costs


def network_flops(config: DLNConfig, height: int, width: int, batch: int = 1) -> int:
    """FLOP of one forward pass over `batch` images of height x width."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    return batch * sum(layer_flops(config, height, width).values())


def flops_by_kernel(config: DLNConfig, height: int, width: int) -> dict[str, int]:
    """FLOP per image grouped by layer kind: '3x3 conv', '1x1 conv', 'dense'."""
    costs = layer_flops(config, height, width)
    grouped: dict[str, int] = {}
    for spec in tensor_specs(config):
        if spec.kind == "conv":
            key = f"{spec.torch_shape[2]}x{spec.torch_shape[3]} conv"
        elif spec.kind == "dense":
            key = "dense"
        else:
            continue
        grouped[key] = grouped.get(key, 0) + costs[spec.torch_name]
    return grouped


def training_step_flops(config: DLNConfig, height: int, width: int, batch: int = 1) -> int:
    """FLOP of one training step's forward and backward pass over `batch` crops.

    The backward pass of every conv and dense layer computes its kernel gradient (the
    forward's multiply-adds again) and its input gradient (again the same count), except
    the input gradient of the first convolution (feat1), whose input is data. Per step:
    3 x forward - feat1's forward. The loss (SSIM's Gaussian filtering, TV) and Adam are
    not counted, as the forward count leaves out biases and activations."""
    forward = layer_flops(config, height, width)
    first = next(spec.torch_name for spec in tensor_specs(config) if spec.kind == "conv")
    return batch * (3 * sum(forward.values()) - forward[first])
