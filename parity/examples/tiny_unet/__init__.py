"""A tiny encoder-decoder (BatchNorm, stride-2 conv, GroupNorm, depthwise conv, PReLU,
ConvTranspose2d, bilinear upsample, skip concat, flatten + Linear head, GELU): the
PyTorch model (torch_model.py) and its Flax port (flax_model.py)."""
