"""Checkpoint files, tensor names and layouts: .pth <-> safetensors (strict, safe,
verified), the rename rule and variable trees (trees.py), layout rules per torch module
kind (rules.py), DLN's tensor table (spec.py), training checkpoints.

Knows files, names and layouts, not models; importing it starts neither framework.
"""

from weights.convert import Checkpoint, convert, load_checkpoint, save_checkpoint
from weights.errors import CheckpointError
from weights.spec import parameter_count, tensor_specs

__all__ = ["Checkpoint", "CheckpointError", "convert", "load_checkpoint", "save_checkpoint",
           "parameter_count", "tensor_specs"]
