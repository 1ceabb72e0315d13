"""The project's own errors: the CLI prints them as one `error:` line (they say what was wrong and
how to fix it); anything else is unexpected and keeps its traceback.  Imports nothing of ours."""


class AlexnetJaxError(Exception):
    """Base of every error whose message is meant for the user as it is."""


class ConfigError(AlexnetJaxError, ValueError):
    """A config key, value or combination that is not allowed (names the key and what it accepts)."""


class DatasetNameError(AlexnetJaxError, ValueError):
    """An unknown dataset or store name (lists the valid ones)."""


class DatasetNotPreparedError(AlexnetJaxError, FileNotFoundError):
    """The dataset is not in the data directory; the message says how to prepare it."""


class SourceError(AlexnetJaxError, ValueError):
    """A `prepare --source` that is missing or has the wrong layout; nothing was written."""


class PreparationError(AlexnetJaxError, RuntimeError):
    """A prepare refused (an empty or mostly unreadable dataset, or another prepare writing it)."""


class InputNotFoundError(AlexnetJaxError, FileNotFoundError):
    """An input named on the command line (a file, folder or workdir) that does not exist, or holds
    nothing of what was asked for; the message names it."""


class InputFileError(AlexnetJaxError, ValueError):
    """An input file that cannot be used (not an image, not decodable, damaged); the message names it."""


class WorkdirError(AlexnetJaxError, RuntimeError):
    """The workdir cannot be used (locked by another run, not writable); the message says what to do."""


class UsageError(AlexnetJaxError, ValueError):
    """Command-line arguments that do not fit together (e.g. 2 labels for 1 workdir)."""


class Interrupted(AlexnetJaxError):
    """Stopped by a signal at a step, batch or shard boundary; the message says what was saved.  The command
    exits 128 + the signal's number (130 for Ctrl-C)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum
