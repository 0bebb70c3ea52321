"""DLN in Flax (Linen): the same network as reference_torch, NHWC.

Public surface (big_vision style): `DLNConfig`, `DLN`, `load`.
"""

from core.config import DLNConfig
from port.model import DLN


def load(path, overrides=None):
    """(model, params) from a .pth or .safetensors checkpoint."""
    from weights.convert import load_checkpoint

    ckpt = load_checkpoint(path, overrides)
    return DLN(ckpt.config), ckpt.flax_tree()


__all__ = ["DLNConfig", "DLN", "load"]
