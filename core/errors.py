"""The one base class for errors a user can cause.

Every problem that a user's input can cause (a bad file, a bad option, an image
that is too large, a checkpoint of another network) raises a subclass of
`UserError` with a one-line message. The `dln` command catches this one type,
prints `dln COMMAND: error: MESSAGE` and exits 2; anything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line (exit code 2)."""


class InputError(UserError, ValueError):
    """A malformed value given by the user (a size, a list of names, mismatched images)."""
