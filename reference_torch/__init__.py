"""DLN in PyTorch, state-dict compatible with the authors' checkpoints.

Public surface (big_vision style): `DLNConfig`, `DLN`, `load`.
"""

from core.config import DLNConfig
from reference_torch.model import DLN


def load(path, overrides=None) -> DLN:
    """A DLN in eval mode from a .pth or .safetensors checkpoint."""
    from reference_torch.inference import model_from_state
    from weights.convert import load_checkpoint

    ckpt = load_checkpoint(path, overrides)
    return model_from_state(ckpt.torch_state, ckpt.config)


__all__ = ["DLNConfig", "DLN", "load"]
