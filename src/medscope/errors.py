"""The one exception type for user mistakes: the CLI prints it as one line and exits 2."""


class MedscopeError(Exception):
    """A problem with the user's input (a path, a name, a value), not a bug in medscope.

    ``quiet``: another process of the same torchrun job reports this error (rank 0 prints it
    once for the whole job); the CLI then exits 2 without printing it again."""

    quiet: bool = False


def first_line(exc: BaseException) -> str:
    """An exception's first line for a one-line message (its type's name when it has no text)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
