"""Gradient, optimiser-step and training parity between the frameworks."""
