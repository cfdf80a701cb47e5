"""The gRPC front end's gate: every RPC passes :class:`~batchwire.server.access.AccessPolicy`.

A ``grpc.aio`` server interceptor, installed only when the policy can refuse anything
(restricted groups or an auth config): a server without either pays nothing per call.
For each method it wraps the handler once (the wrapped handlers are cached by method
path) so that the behaviour first asks the policy, with the call's invocation
metadata and, under mutual TLS, the names of the verified client certificate
(``context.auth_context()``: the common name and the subject alternative names).
A refused call ends with the refusal's status before the servicer sees its request;
an allowed one runs with :data:`~batchwire.server.access.CURRENT_PRINCIPAL` set to
the principal's name, which the servicer copies into its
:class:`~batchwire.server.inference_call.Caller`: the principal is never read from
anything the client writes into the request.

A refused inference call (``ModelInfer``, ``ModelStreamInfer``) is also reported to
``on_refused`` when one is given (the audit log: every inference call the server
refuses has its record, these included): the operation, the model name and request
id of a unary call's message ("" for a stream, refused before its first message) and
the refusal.

Methods are mapped onto the policy's operation names by their last path segment,
with the ``grpc.health.v1.Health`` methods prefixed ``Health``; a method of another
service (none is served) is left to gRPC, which answers UNIMPLEMENTED.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from batchwire.core.errors import InferenceError
from batchwire.server.access import CURRENT_PRINCIPAL, OPERATIONS, AccessPolicy
from batchwire.server.status import GRPC_STATUS, describe

__all__ = ["INFERENCE_OPERATIONS", "AccessInterceptor", "RefusalHook", "operation_of"]

#: auth_context() keys holding the names of a verified client certificate.
_CERTIFICATE_KEYS = ("x509_common_name", "x509_subject_alternative_name")


def operation_of(method: str) -> str | None:
    """``/inference.GRPCInferenceService/ModelInfer`` -> ``ModelInfer``; None if unknown."""
    service, _, name = method.rpartition("/")
    if service.endswith("grpc.health.v1.Health"):
        name = "Health" + name
    return name if name in OPERATIONS else None


#: Told of a refused inference call: (operation, model name, request id, the refusal);
#: returns an awaitable to wait for before the refusal is sent, or None.
RefusalHook = Callable[[str, str, str, InferenceError], "Awaitable[None] | None"]

#: The operations whose refusals on_refused hears of.
INFERENCE_OPERATIONS = frozenset({"ModelInfer", "ModelStreamInfer"})


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Asks ``policy`` before every RPC; see the module docstring."""

    def __init__(self, policy: AccessPolicy, on_refused: RefusalHook | None = None) -> None:
        self._policy = policy
        self._on_refused = on_refused
        self._handlers: dict[str, grpc.RpcMethodHandler | None] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        try:
            return self._handlers[method]
        except KeyError:
            pass
        handler = await continuation(handler_call_details)
        operation = operation_of(method)
        wrapped = (
            handler if handler is None or operation is None else self._wrap(handler, operation)
        )
        self._handlers[method] = wrapped
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, operation: str) -> grpc.RpcMethodHandler:
        authorize = self._policy.authorize
        mutual = self._policy.mutual_tls

        hook = self._on_refused if operation in INFERENCE_OPERATIONS else None

        async def admit(context: grpc.aio.ServicerContext, request: Any) -> None:
            """Set the call's principal, or end the call with the refusal's status."""
            names = (lambda: _certificate_names(context)) if mutual else _no_names
            try:
                principal = authorize(operation, context.invocation_metadata(), names)
            except InferenceError as exc:
                if hook is not None:
                    model = getattr(request, "model_name", "") if request is not None else ""
                    request_id = getattr(request, "id", "") if request is not None else ""
                    waiter = hook(operation, model, request_id, exc)
                    if waiter is not None:
                        await waiter
                await context.abort(GRPC_STATUS[exc.code], describe(exc))
                raise  # abort() raised already; never reached
            CURRENT_PRINCIPAL.set(principal)

        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _answering(handler.unary_unary, admit), **serializers
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _streaming(handler.unary_stream, admit), **serializers
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _answering(handler.stream_unary, admit), **serializers
            )
        return grpc.stream_stream_rpc_method_handler(
            _streaming(handler.stream_stream, admit), **serializers
        )


#: Checks a call: sets its principal, or aborts it (see AccessInterceptor._wrap); the
#: second argument is the request message of a unary call, else None.
Admit = Callable[[grpc.aio.ServicerContext, Any], Awaitable[None]]


def _answering(behaviour: Callable[..., Any], admit: Admit) -> Callable[..., Any]:
    """A behaviour with one response (unary or client-streaming), checked first."""

    async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
        # A request iterator (client streaming) is not a message: the hook gets None.
        await admit(context, None if hasattr(request, "__aiter__") else request)
        return await behaviour(request, context)

    return checked


def _streaming(behaviour: Callable[..., Any], admit: Admit) -> Callable[..., Any]:
    """A server-streaming behaviour (async generator, or coroutine writing with
    ``context.write``), checked first."""
    if not inspect.isasyncgenfunction(behaviour):
        return _answering(behaviour, admit)

    async def generator(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await admit(context, None if hasattr(request, "__aiter__") else request)
        async for response in behaviour(request, context):
            yield response

    return generator


def _no_names() -> tuple[str, ...]:
    return ()


def _certificate_names(context: grpc.aio.ServicerContext) -> list[str]:
    """The common name and SANs of the caller's verified client certificate."""
    auth = context.auth_context()
    names: list[str] = []
    for key in _CERTIFICATE_KEYS:
        for value in auth.get(key, ()):
            names.append(value.decode() if isinstance(value, bytes) else str(value))
    return names
