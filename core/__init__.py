"""The framework-neutral core: network config, training recipe, errors, image I/O,
low-light synthesis, data sources, the evaluation protocol and atomic file writing.

Bottom layer of the toolkit: it imports numpy, Pillow and scikit-image, never PyTorch,
JAX or Flax, and nothing from the layers above (weights, port, reference_torch,
parity, dln).
"""
