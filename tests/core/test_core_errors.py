"""core.errors: each error's status and reason, and how the classes relate."""

from __future__ import annotations

import asyncio

import pytest

from batchwire.core.errors import (
    DeadlineExceededError,
    InferenceError,
    InvalidInputError,
    ModelExecutionError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    QueueFullError,
    QueueTimeoutError,
    RequestCancelledError,
    ServerShuttingDownError,
    StatusCode,
    UnsupportedError,
)


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (InferenceError, StatusCode.INTERNAL, "internal"),
        (InvalidInputError, StatusCode.INVALID_ARGUMENT, "invalid_argument"),
        (ModelNotFoundError, StatusCode.NOT_FOUND, "not_found"),
        (ModelNotReadyError, StatusCode.UNAVAILABLE, "unavailable"),
        (QueueFullError, StatusCode.UNAVAILABLE, "rejected"),
        (QueueTimeoutError, StatusCode.UNAVAILABLE, "timeout"),
        (DeadlineExceededError, StatusCode.DEADLINE_EXCEEDED, "deadline_exceeded"),
        (RequestCancelledError, StatusCode.CANCELLED, "cancelled"),
        (ModelExecutionError, StatusCode.INTERNAL, "backend"),
        (ServerShuttingDownError, StatusCode.UNAVAILABLE, "unavailable"),
        (UnsupportedError, StatusCode.UNIMPLEMENTED, "unimplemented"),
    ],
)
def test_each_error_carries_its_status_and_reason(
    error: type[InferenceError], code: StatusCode, reason: str
) -> None:
    raised = error("model 'm' version '1': what went wrong")
    assert (raised.code, raised.reason) == (code, reason)
    assert raised.message == str(raised) == "model 'm' version '1': what went wrong"
    assert isinstance(raised, InferenceError)


def test_status_codes_are_named_after_the_grpc_codes() -> None:
    grpc = pytest.importorskip("grpc")
    for code in StatusCode:
        assert grpc.StatusCode[code.value].name == code.name


def test_a_cancelled_request_is_not_an_asyncio_cancellation() -> None:
    # Raised out of a coroutine, asyncio's CancelledError would cancel the awaiting task.
    assert not issubclass(RequestCancelledError, asyncio.CancelledError)
    assert issubclass(asyncio.CancelledError, BaseException)


def test_a_load_error_is_not_reported_to_callers_as_an_inference_error() -> None:
    assert not issubclass(ModelLoadError, InferenceError)
    assert str(ModelLoadError("config.pbtxt: max_batch_size: must be >= 0")).startswith(
        "config.pbtxt"
    )
