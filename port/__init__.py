"""DLN in Flax (Linen): the same network as reference_torch, NHWC.

Public surface (big_vision style): `DLNConfig`, `DLN`, `load`. `DLN` is imported on
first use (PEP 562), so that importing a light submodule (port.host_devices, which
every `dln` command's parser reads) does not import Flax and JAX.
"""

from core.config import DLNConfig


def __getattr__(name):
    if name == "DLN":
        from port.model import DLN

        return DLN
    raise AttributeError(f"module 'port' has no attribute {name!r}")


def load(path, overrides=None):
    """(model, params) from a .pth or .safetensors checkpoint."""
    from weights.convert import load_checkpoint
    from port.model import DLN

    ckpt = load_checkpoint(path, overrides)
    return DLN(ckpt.config), ckpt.flax_tree()


__all__ = ["DLNConfig", "DLN", "load"]
