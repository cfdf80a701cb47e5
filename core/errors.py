"""Errors the data plane raises, each carrying the status a front end reports.

Front ends map :class:`StatusCode` one to one onto their own codes (gRPC status
codes share these names). Messages name what was wrong, expected versus got.
"""

from __future__ import annotations

import enum


class StatusCode(enum.Enum):
    """Protocol-neutral status, named after the gRPC codes they map to."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    ALREADY_EXISTS = "ALREADY_EXISTS"


class InferenceError(Exception):
    """Base class: an error that is reported to the caller with ``code``."""

    code: StatusCode = StatusCode.INTERNAL
    #: Short machine-readable reason, used as a metrics label.
    reason: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(InferenceError):
    """The request does not match the model's inputs (name, datatype, shape, size)."""

    code = StatusCode.INVALID_ARGUMENT
    reason = "invalid_argument"


class ModelNotFoundError(InferenceError):
    """No such model, or no such version of it."""

    code = StatusCode.NOT_FOUND
    reason = "not_found"


class ModelNotReadyError(InferenceError):
    """The model exists but is loading, unloading or failed to load."""

    code = StatusCode.UNAVAILABLE
    reason = "unavailable"


class QueueFullError(InferenceError):
    """The model's queue (for this priority level) is at max_queue_size."""

    code = StatusCode.UNAVAILABLE
    reason = "rejected"


class QueueTimeoutError(InferenceError):
    """The request's queue timeout expired before it could be scheduled."""

    code = StatusCode.UNAVAILABLE
    reason = "timeout"


class DeadlineExceededError(InferenceError):
    """The caller's deadline passed before the request reached the model."""

    code = StatusCode.DEADLINE_EXCEEDED
    reason = "deadline_exceeded"


class RequestCancelledError(InferenceError):
    """The caller cancelled the request (named apart from ``asyncio.CancelledError``)."""

    code = StatusCode.CANCELLED
    reason = "cancelled"


class ModelExecutionError(InferenceError):
    """The model raised while running a batch that contained this request."""

    code = StatusCode.INTERNAL
    reason = "backend"


class ServerShuttingDownError(InferenceError):
    """The server is stopping and accepts no new work."""

    code = StatusCode.UNAVAILABLE
    reason = "unavailable"


class UnsupportedError(InferenceError):
    """A protocol feature batchwire does not implement (yet)."""

    code = StatusCode.UNIMPLEMENTED
    reason = "unimplemented"


class UnauthenticatedError(InferenceError):
    """The call carries no credentials the server knows (no token, an unknown one, no
    client certificate a principal is named by)."""

    code = StatusCode.UNAUTHENTICATED
    reason = "unauthenticated"


class PermissionDeniedError(InferenceError):
    """The caller is known, and its scopes do not allow what it asked for."""

    code = StatusCode.PERMISSION_DENIED
    reason = "permission_denied"


class RestrictedProtocolError(InferenceError):
    """A ``--grpc-restricted-protocol`` group called without its header (Triton: UNAVAILABLE)."""

    code = StatusCode.UNAVAILABLE
    reason = "restricted"


class ModelControlDisabledError(InferenceError):
    """A model load or unload request while the model control mode does not allow one.

    Triton answers UNAVAILABLE, with the same message in its NONE and POLL modes.
    """

    code = StatusCode.UNAVAILABLE
    reason = "unavailable"


class ModelNameError(InferenceError):
    """A model name that does not name a folder inside the model repository."""

    code = StatusCode.INVALID_ARGUMENT
    reason = "invalid_argument"


class ModelLoadError(Exception):
    """A model (or its config.pbtxt) could not be loaded; names the file and field."""
