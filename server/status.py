"""Report data-plane errors as gRPC statuses: the one place a servicer maps them.

:func:`reports_errors` wraps every unary RPC of a servicer class: an
:class:`~batchwire.core.errors.InferenceError` ends the call with the gRPC status of
its ``code`` (:data:`GRPC_STATUS`, one to one) and its ``message`` as details; any
other exception is a bug: logged with its traceback, reported as INTERNAL with
``"<type>: <text>"``. Streaming RPCs report per-request errors in their responses
and are left alone.

Every message a caller is told passes through :func:`capped` (via :func:`describe`):
gRPC sends it percent-encoded in the ``grpc-message`` trailer, and a trailer past the
client's metadata limit (8 KiB by default) turns the status into RESOURCE_EXHAUSTED,
losing the real code. A message quoting a caller's 20 KB model name must still arrive
as NOT_FOUND, so a message longer than :data:`MESSAGE_LIMIT` characters, or whose
encoded form would exceed :data:`MESSAGE_WIRE_LIMIT` bytes, keeps its head and ends
with ``... [N characters cut]``. The common case (short ASCII) costs one ``len`` and
one ``isascii``.

Requests that do not decode: gRPC runs a method's request deserializer before the
servicer, and turns an exception raised there into UNKNOWN ("Unexpected
DecodeError"), which tells the caller nothing. :class:`DecodeChecked` stands between
a generated ``add_*_to_server`` function and the server and gives every method a
deserializer that never raises: bytes that do not parse (truncated, garbage, invalid
UTF-8 in a string field) become an :class:`Undecodable` in place of the request. A
unary RPC wrapped by :func:`reports_errors` answers it INVALID_ARGUMENT naming the
message type and protobuf's error before the method runs; a streaming RPC sees it
among its requests and must answer it itself. Decoded requests pay one ``type() is``
test.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc

from batchwire.core.errors import InferenceError, StatusCode

__all__ = [
    "GRPC_STATUS",
    "MESSAGE_LIMIT",
    "MESSAGE_WIRE_LIMIT",
    "DecodeChecked",
    "Undecodable",
    "capped",
    "describe",
    "reports_errors",
]

log = logging.getLogger(__name__)

GRPC_STATUS: dict[StatusCode, grpc.StatusCode] = {
    code: getattr(grpc.StatusCode, code.value) for code in StatusCode
}

_Servicer = TypeVar("_Servicer", bound=type)
_Method = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


#: Most characters of a status message a caller is sent (the rest is cut).
MESSAGE_LIMIT = 2000
#: Most bytes the kept part may take once percent-encoded for ``grpc-message``:
#: printable ASCII but ``%`` is one byte, any other byte three. Short ASCII messages
#: are at most 3 * MESSAGE_LIMIT, well under the 8 KiB default metadata limit.
MESSAGE_WIRE_LIMIT = 3 * MESSAGE_LIMIT


def capped(message: str) -> str:
    """``message`` as sent to a caller: cut to fit the limits above, saying how much was cut."""
    if len(message) <= MESSAGE_LIMIT and message.isascii():
        return message  # at most 3 encoded bytes a character: within MESSAGE_WIRE_LIMIT
    kept = 0
    wire = 0
    for char in message:
        if " " <= char <= "~" and char != "%":
            cost = 1
        else:
            cost = 3 * len(char.encode("utf-8", "surrogatepass"))
        if kept == MESSAGE_LIMIT or wire + cost > MESSAGE_WIRE_LIMIT:
            break
        kept += 1
        wire += cost
    if kept == len(message):
        return message
    return f"{message[:kept]}... [{len(message) - kept} characters cut]"


def describe(exc: BaseException) -> str:
    """What a caller is told of ``exc``: an InferenceError's message, else ``type: text``.

    Either way :func:`capped`.
    """
    if isinstance(exc, InferenceError):
        return capped(exc.message)
    return capped(f"{type(exc).__name__}: {exc}")


class Undecodable:
    """Stands for a request whose bytes did not decode as ``type_name``."""

    __slots__ = ("error", "type_name")

    def __init__(self, type_name: str, error: str) -> None:
        self.type_name = type_name
        self.error = error

    @property
    def message(self) -> str:
        """What the caller is told (with INVALID_ARGUMENT)."""
        return capped(f"the request is not a valid {self.type_name} protobuf message: {self.error}")


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` returning an :class:`Undecodable` where it would raise."""
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)  # FromString: a bound classmethod
    descriptor = getattr(owner, "DESCRIPTOR", None)
    type_name = str(getattr(descriptor, "full_name", "") or getattr(owner, "__name__", "request"))

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, or anything else parsing may raise
            return Undecodable(type_name, f"{type(exc).__name__}: {exc}")

    return decode


def _lenient_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` with its request deserializer made lenient (same behaviour otherwise)."""
    decode = _lenient(handler.request_deserializer)
    encode = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(handler.unary_unary, decode, encode)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(handler.unary_stream, decode, encode)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(handler.stream_unary, decode, encode)
    return grpc.stream_stream_rpc_method_handler(handler.stream_stream, decode, encode)


class _LenientService(grpc.ServiceRpcHandler):
    """A service's generic handler whose methods decode leniently (built once per method)."""

    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner
        #: method path -> lenient handler; only methods the service has (bounded).
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service_name(self) -> str:
        name = getattr(self._inner, "service_name", None)
        return name() if callable(name) else ""

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            found = self._inner.service(handler_call_details)
            if found is None:
                return None  # not ours: not cached (method names are the caller's)
            handler = self._handlers[method] = _lenient_handler(found)
        return handler


class DecodeChecked:
    """Passed as the ``server`` of a generated ``add_*_to_server``: lenient decoding.

    Forwards the generated registration calls to ``server`` (a ``grpc.aio.Server`` or
    an adapter with the same two methods) with every method's deserializer replaced
    (see the module docstring). Only for servicers whose unary methods are wrapped by
    :func:`reports_errors` and whose streaming methods check for :class:`Undecodable`.
    """

    def __init__(self, server: Any) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        """Register ``handlers``, each wrapped so that its methods decode leniently."""
        self._server.add_generic_rpc_handlers([_LenientService(h) for h in handlers])

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        """Register the method table, each handler with a lenient deserializer."""
        self._server.add_registered_method_handlers(
            service, {name: _lenient_handler(h) for name, h in handlers.items()}
        )


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
        if type(request) is Undecodable:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        try:
            return await method(self, request, context)
        except InferenceError as exc:
            await context.abort(GRPC_STATUS[exc.code], describe(exc))
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # never let a bug take the connection down silently
            model = getattr(request, "model_name", "") or getattr(request, "name", "")
            log.exception("%s failed%s", name, f" for model '{model}'" if model else "")
            await context.abort(grpc.StatusCode.INTERNAL, describe(exc))

    return rpc
