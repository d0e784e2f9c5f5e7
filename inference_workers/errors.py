"""Domain errors of the inference worker, one place for all of them."""


class WorkerError(Exception):
    """Base class of every error the worker raises on purpose."""


class SettingsError(WorkerError):
    """A ``BERTH_WORKER_*`` value (or a command-line flag) is missing or malformed.

    The message always names the variable and says what a valid value looks like.
    """
