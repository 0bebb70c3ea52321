"""The one place that maps a framework's name ("jax", "torch") to that framework's
implementation. It sits above the two models (port/ and reference_torch/ never import
each other, so neither can choose between them) and below the comparison layer and
the application, which both need the choice: `dln train` and training parity.
"""
