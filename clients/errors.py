"""The one exception the batchwire clients raise for server-side failures."""

from __future__ import annotations

import re

import grpc

__all__ = ["InferenceServerError"]

_CODE_PREFIX = re.compile(r"^\s*(?:\[([A-Z_]+)\]|([A-Z_]+):)\s*")
_CODES_BY_NAME = {code.name: code for code in grpc.StatusCode}


class InferenceServerError(Exception):
    """A request failed: the gRPC status code and the server's details message.

    Raised for failed unary calls (converted from ``grpc.RpcError``), for a
    stream that ends with an error status, and for ``error_message`` entries
    of a ``ModelStreamInfer`` stream (``request_id`` then names the request,
    when the server echoes it).
    """

    def __init__(self, status_code: grpc.StatusCode, message: str, *, request_id: str = "") -> None:
        super().__init__(status_code, message)
        self.status_code = status_code
        self.message = message
        self.request_id = request_id

    @property
    def details(self) -> str:
        """The server's message (the name gRPC gives it)."""
        return self.message

    def __str__(self) -> str:
        prefix = f"request {self.request_id!r}: " if self.request_id else ""
        return f"[{self.status_code.name}] {prefix}{self.message}"

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> InferenceServerError:
        """Convert an error raised by a grpc (sync or aio) call."""
        code = error.code() if hasattr(error, "code") else None
        details = error.details() if hasattr(error, "details") else None
        return cls(code or grpc.StatusCode.UNKNOWN, details or str(error))

    @classmethod
    def from_stream_message(cls, message: str, request_id: str = "") -> InferenceServerError:
        """An error for a stream response's ``error_message``.

        The stream protocol has no status field; a leading status name
        (``"NOT_FOUND: ..."`` or ``"[NOT_FOUND] ..."``) is honoured, otherwise
        the code is ``UNKNOWN``.
        """
        match = _CODE_PREFIX.match(message)
        if match is not None:
            code = _CODES_BY_NAME.get(match.group(1) or match.group(2))
            if code is not None:
                return cls(code, message[match.end() :] or message, request_id=request_id)
        return cls(grpc.StatusCode.UNKNOWN, message, request_id=request_id)
