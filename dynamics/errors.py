"""The one exception type users see: a one-line message that says what is wrong and how to fix it."""


class MemdynError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits with status 2."""
