"""Domain errors of the inference worker, one place for all of them."""


class WorkerError(Exception):
    """Base class of every error the worker raises on purpose."""


class SettingsError(WorkerError):
    """A ``BERTH_WORKER_*`` value (or a command-line flag) is missing or malformed.

    The message always names the variable and says what a valid value looks like.
    """


class DataPlaneError(WorkerError):
    """An error with an HTTP status, raised by the data plane and mapped by its adapter."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(DataPlaneError):
    """The request is malformed, or its inputs do not match the model (names the input)."""

    status = 400


class UnauthorizedError(DataPlaneError):
    """The request lacks the worker token: only the gateway may call a worker."""

    status = 401


class ModelNotFoundError(DataPlaneError):
    """No such model (version) is hosted here."""

    status = 404


class MethodNotAllowedError(DataPlaneError):
    """The route exists but not for this method (the answer names the one allowed)."""

    status = 405

    def __init__(self, method: str, allowed: str) -> None:
        super().__init__(f"{method} is not allowed here; use {allowed}")
        self.allowed = allowed


class PayloadTooLargeError(DataPlaneError):
    """The request body is over the worker's limit."""

    status = 413


class UnsupportedEncodingError(DataPlaneError):
    """The body is compressed with an encoding the worker does not read."""

    status = 415


class UnavailableError(DataPlaneError):
    """The model is not ready, its queue is full, or the worker is draining (retry elsewhere)."""

    status = 503


class QueueFullError(UnavailableError):
    """The model's queue is at ``max_queue_size``."""


class RequestTimeoutError(UnavailableError):
    """The request waited in the queue past its timeout (503, as Triton answers: overloaded)."""


class ExecutionFailedError(DataPlaneError):
    """The model failed on the batch this request was in."""

    status = 500


class LoadError(WorkerError):
    """A model could not be loaded; the message says why (memory, checksum, format)."""


class InsufficientMemoryError(LoadError):
    """The device has too little free memory for the model, after any allowed eviction."""
