"""Worked examples besides DLN: small PyTorch models with hand-written Flax ports."""
