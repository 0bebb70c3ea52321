"""A CycleGAN-style ResNet generator (reflect padding, InstanceNorm, residual blocks,
stride-2 convs, ConvTranspose2d upsampling, tanh) in PyTorch (torch_model.py) and its Flax
Linen port (flax_model.py), with planted defects."""
