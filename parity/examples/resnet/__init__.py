"""A ResNet with torchvision's resnet18 structure (BasicBlock, projection shortcut, max-pool
padding 1, BatchNorm) in PyTorch (torch_model.py) and its Flax Linen port (flax_model.py):
named like torchvision, or with Flax's automatic names and the shortcut built first."""
