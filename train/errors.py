"""The one error type bcsub raises for bad user input."""


class BcsubError(Exception):
    """A user-facing error: one line naming the problem and the fix."""
