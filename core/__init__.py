"""The framework-neutral core: network config, training recipe, errors, image I/O,
low-light synthesis, data sources and the bundled sample pairs (samples/), the
evaluation protocol, tiling geometry, atomic file and report writing, worker processes.

Bottom layer of the toolkit: it imports numpy, Pillow and scikit-image, never PyTorch,
JAX or Flax, and nothing from the layers above (weights, port, reference_torch,
frameworks, parity, dln).
"""
