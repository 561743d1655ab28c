"""The one exception type for user mistakes: the CLI prints it as one line and exits 2."""


class MedscopeError(Exception):
    """A problem with the user's input (a path, a name, a value), not a bug in medscope."""
