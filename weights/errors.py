"""The one exception type the weights package raises for problems a user can cause."""

from core.errors import UserError


class CheckpointError(UserError):
    """A checkpoint that cannot be used: unreadable, unsafe, or not this network.

    The message is one line meant for the user; the CLI prints it and exits 2.
    """
