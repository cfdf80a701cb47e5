"""Report data-plane errors as gRPC statuses: the one place a servicer maps them.

:func:`reports_errors` wraps every unary RPC of a servicer class: an
:class:`~batchwire.core.errors.InferenceError` ends the call with the gRPC status of
its ``code`` (:data:`GRPC_STATUS`, one to one) and its ``message`` as details; any
other exception is a bug: logged with its traceback, reported as INTERNAL with
``"<type>: <text>"``. Streaming RPCs report per-request errors in their responses
and are left alone.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from batchwire.core.errors import InferenceError, StatusCode

__all__ = ["GRPC_STATUS", "describe", "reports_errors"]

log = logging.getLogger(__name__)

GRPC_STATUS: dict[StatusCode, grpc.StatusCode] = {
    code: getattr(grpc.StatusCode, code.value) for code in StatusCode
}

_Servicer = TypeVar("_Servicer", bound=type)
_Method = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def describe(exc: BaseException) -> str:
    """What a caller is told of ``exc``: an InferenceError's message, else ``type: text``."""
    if isinstance(exc, InferenceError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def reports_errors(cls: _Servicer) -> _Servicer:
    """Class decorator: every unary RPC ``cls`` implements reports its errors as statuses.

    The RPCs are the methods ``cls`` defines over one of its bases (the generated
    servicer); each may be an ``async def`` or a plain function returning an awaitable.
    Async generators (streaming responses) are not wrapped.
    """
    bases = [base for base in cls.__mro__[1:] if base is not object]
    for name, method in list(vars(cls).items()):
        if name.startswith("_") or not callable(method):
            continue
        if inspect.isasyncgenfunction(method) or not any(hasattr(b, name) for b in bases):
            continue
        setattr(cls, name, _reporting(method))
    return cls


def _reporting(method: _Method) -> _Method:
    name = method.__name__

    @functools.wraps(method)
    async def rpc(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except InferenceError as exc:
            await context.abort(GRPC_STATUS[exc.code], exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # never let a bug take the connection down silently
            model = getattr(request, "model_name", "") or getattr(request, "name", "")
            log.exception("%s failed%s", name, f" for model '{model}'" if model else "")
            await context.abort(grpc.StatusCode.INTERNAL, describe(exc))

    return rpc
