"""The one exception type users see: a one-line message that says what is wrong and how to fix it."""


class MemdynError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits with status 2."""


def note(message: str) -> None:
    """One line on stderr saying what a command did instead of what was asked (an input that is
    legitimate but was adjusted, e.g. a sample range clamped to the data)."""
    import sys

    print(f"memdyn: note: {message}", file=sys.stderr)
