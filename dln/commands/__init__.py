"""One module per `dln` subcommand; see dln.cli."""
