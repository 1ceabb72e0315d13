"""The project's own errors: the CLI prints them as one `error:` line (they say what was wrong and
how to fix it); anything else is unexpected and keeps its traceback."""


class AlexnetJaxError(Exception):
    """Base of every error whose message is meant for the user as it is."""
