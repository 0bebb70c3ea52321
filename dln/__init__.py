"""Framework-neutral core of the DLN porting toolkit: config, images, data, CLI.

Importing this package starts neither PyTorch nor JAX.
"""

__version__ = "0.1.0"
