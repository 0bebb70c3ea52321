"""The one place that maps a framework's name ("jax", "nnx", "torch") to that framework's
implementation: the trainers, the predictor that runs DLN on images, and its memory
plan. It sits above the two models (port/ and reference_torch/ never import each other,
so neither can choose between them) and below the comparison layer and the application,
which both need the choice (`dln train`, `dln enhance`, training parity, table2, bench).
"""
