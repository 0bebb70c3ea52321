"""A tiny MLP-Mixer (strided patch conv, BatchNorm, LeakyReLU(0.2), token- and
channel-mixing MLPs with LayerNorm and exact GELU, residuals, mean pooling, Linear head):
the PyTorch model (torch_model.py) and its Flax NNX port (nnx_model.py), an NNX-only
example written against the NNX frontend of the engine."""
