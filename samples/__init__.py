"""The bundled low-light pairs, shipped as package data (no code).

`low/*.png` and `high/*.png`: scikit-image's chelsea, coffee and rocket, darkened
with the authors' recipe (seed 0); core.paths.SAMPLE_IMAGES is this folder.
"""
