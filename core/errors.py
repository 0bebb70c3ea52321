"""The one base class for errors a user can cause.

Every problem that a user's input can cause (a bad file, a bad option, an image
that is too large, a checkpoint of another network) raises a subclass of
`UserError` with a one-line message. The `dln` command catches this one type,
prints `dln COMMAND: error: MESSAGE` and exits 2; anything else is a bug and keeps
its traceback. One kind is a verdict, not a mistake: `PortDiverges`, a port whose
structure differs from the reference's before any number can be compared, prints
`dln COMMAND: FAIL: MESSAGE` and exits 1 (as a numerical divergence does).
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line (exit code 2)."""


class PortDiverges(UserError):
    """The port differs from the reference in structure (variables that do not fit,
    nothing that pairs): no comparison can pass, so the verdict is FAIL (exit 1)."""

    exit_code = 1


class InputError(UserError, ValueError):
    """A malformed value given by the user (a size, a list of names, mismatched images)."""
