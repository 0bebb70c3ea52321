"""The application layer: the `dln` command (cli.py, one module per subcommand in
commands/), enhancing images, the demo, synthetic pairs, the training loop and its log.

Importing this package starts neither PyTorch nor JAX.
"""

__version__ = "0.1.0"
