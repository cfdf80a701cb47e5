"""gRPC server reflection (``grpc.reflection.v1`` and ``v1alpha``), answered from our pool.

Tools such as grpcurl discover the API through it. Every batchwire message,
the health service and the reflection services themselves live in the private
descriptor pool :data:`batchwire.protos.pool.POOL`, so that pool is the only
source of answers. v1 and v1alpha declare identical messages; one servicer
class serves both, each instance building the messages of its own version.

Answers, one response per request, in order, on the same stream:

* ``list_services``: the service names given to :func:`enable_reflection`.
* ``file_by_filename``: that file (names are as registered, e.g.
  ``batchwire/protos/grpc_service.proto``).
* ``file_containing_symbol``: the file defining a fully-qualified symbol:
  package-level messages, enums, enum values and services, and members
  (nested messages and enums, fields, oneofs, extensions, service methods).
  A leading ``.`` is accepted, as descriptors write type references that way.
* ``file_containing_extension``: the file declaring extension number N of a
  message type.
* ``all_extension_numbers_of_type``: the extension numbers of a message type,
  ascending (an empty list for a known type without extensions).

A file answer holds the serialized ``FileDescriptorProto`` of the file first,
then those of all its transitive imports (each once), every time: clients
may build descriptors from any single response. An unknown file, symbol, type
or extension answers ``error_response`` with NOT_FOUND (5) and a message naming
it; a request with no ``message_request`` set answers INVALID_ARGUMENT (3).
The stream stays open after an error response.

A servicer keeps no state between requests, so one instance serves any number
of concurrent streams on the server's event loop. The pool is only read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor

from batchwire.protos import (
    grpc_service_pb2,
    health_pb2,
    reflection_v1_pb2,
    reflection_v1_pb2_grpc,
    reflection_v1alpha_pb2,
    reflection_v1alpha_pb2_grpc,
)
from batchwire.protos.pool import POOL
from batchwire.server.status import DecodeChecked, Undecodable

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from batchwire.server.app import GenericHandlersOnly as GenericHandlers

INFERENCE_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_V1_SERVICE = reflection_v1_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name
REFLECTION_V1ALPHA_SERVICE = reflection_v1alpha_pb2.DESCRIPTOR.services_by_name[
    "ServerReflection"
].full_name
#: What ``list_services`` answers by default.
SERVICE_NAMES: tuple[str, ...] = (
    INFERENCE_SERVICE,
    HEALTH_SERVICE,
    REFLECTION_V1_SERVICE,
    REFLECTION_V1ALPHA_SERVICE,
)

_NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
_INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]

# For a symbol the pool's own FindFileContainingSymbol does not resolve, the kinds of
# parent it may belong to and the member tables to look it up in. Service methods need
# this (upb's pool does not index them), and implementations differ on the others.
_MEMBER_TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("FindServiceByName", ("methods_by_name",)),
    (
        "FindMessageTypeByName",
        (
            "fields_by_name",
            "oneofs_by_name",
            "extensions_by_name",
            "nested_types_by_name",
            "enum_types_by_name",
        ),
    ),
    ("FindEnumTypeByName", ("values_by_name",)),
)


class ReflectionNotFoundError(LookupError):
    """A requested file, symbol, type or extension is not in the pool (NOT_FOUND)."""


class ReflectionServicer:
    """Answers ``ServerReflectionInfo`` streams from a descriptor pool.

    ``messages`` is the generated module of one reflection version
    (``reflection_v1_pb2`` or ``reflection_v1alpha_pb2``); responses are built
    from its classes, so one instance serves one version.
    """

    def __init__(
        self,
        messages: ModuleType,
        service_names: Iterable[str] = SERVICE_NAMES,
        pool: descriptor_pool.DescriptorPool = POOL,
    ) -> None:
        """Raises ValueError when a service name is not defined in ``pool``."""
        self._messages = messages
        self._pool = pool
        self._service_names = tuple(service_names)
        for name in self._service_names:
            try:
                pool.FindServiceByName(name)
            except KeyError:
                raise ValueError(
                    f"reflection: service '{name}' is not in the descriptor pool"
                ) from None

    async def ServerReflectionInfo(
        self, request_iterator: AsyncIterable[Message], context: grpc.aio.ServicerContext | None
    ) -> AsyncIterator[Message]:
        """One response per request, in request order, until the client half-closes.

        A message that does not decode (the server registers this method through
        ``status.DecodeChecked``) is answered with an INVALID_ARGUMENT
        ``error_response`` and the stream goes on, as for any other bad request.
        """
        async for request in request_iterator:
            if type(request) is Undecodable:
                response: Any = self._messages.ServerReflectionResponse()
                response.error_response.error_code = _INVALID_ARGUMENT
                response.error_response.error_message = request.message
                yield response
                continue
            yield self.answer(request)

    def answer(self, request: Message) -> Message:
        """The response to one ``ServerReflectionRequest`` of this servicer's version."""
        req: Any = request
        response: Any = self._messages.ServerReflectionResponse(
            valid_host=req.host, original_request=req
        )
        kind = req.WhichOneof("message_request")
        try:
            if kind == "list_services":
                listing = response.list_services_response
                for name in self._service_names:
                    listing.service.add(name=name)
            elif kind == "file_by_filename":
                self._add_files(response, self._file_by_name(req.file_by_filename))
            elif kind == "file_containing_symbol":
                self._add_files(response, self._file_containing_symbol(req.file_containing_symbol))
            elif kind == "file_containing_extension":
                ext = req.file_containing_extension
                self._add_files(
                    response,
                    self._file_containing_extension(ext.containing_type, ext.extension_number),
                )
            elif kind == "all_extension_numbers_of_type":
                message_type = self._message_type(req.all_extension_numbers_of_type)
                numbers = response.all_extension_numbers_response
                numbers.base_type_name = message_type.full_name
                numbers.extension_number.extend(
                    sorted(ext.number for ext in self._pool.FindAllExtensions(message_type))
                )
            else:
                response.error_response.error_code = _INVALID_ARGUMENT
                response.error_response.error_message = (
                    "reflection request sets no message_request (expected one of list_services, "
                    "file_by_filename, file_containing_symbol, file_containing_extension, "
                    "all_extension_numbers_of_type)"
                )
        except ReflectionNotFoundError as exc:
            response.error_response.error_code = _NOT_FOUND
            response.error_response.error_message = str(exc)
        return response

    # Lookups -----------------------------------------------------------

    def _file_by_name(self, name: str) -> FileDescriptor:
        try:
            return self._pool.FindFileByName(name)
        except KeyError:
            raise ReflectionNotFoundError(f"file '{name}' not found") from None

    def _file_containing_symbol(self, symbol: str) -> FileDescriptor:
        name = symbol.removeprefix(".")
        if name:
            try:
                return self._pool.FindFileContainingSymbol(name)
            except KeyError:
                pass
            parent, _, member = name.rpartition(".")
            if parent:
                for finder, tables in _MEMBER_TABLES:
                    try:
                        owner = getattr(self._pool, finder)(parent)
                    except KeyError:
                        continue
                    if any(member in getattr(owner, table) for table in tables):
                        return owner.file
        raise ReflectionNotFoundError(f"symbol '{symbol}' not found")

    def _message_type(self, name: str) -> Any:
        try:
            return self._pool.FindMessageTypeByName(name.removeprefix("."))
        except KeyError:
            raise ReflectionNotFoundError(f"message type '{name}' not found") from None

    def _file_containing_extension(self, containing_type: str, number: int) -> FileDescriptor:
        message_type = self._message_type(containing_type)
        try:
            return self._pool.FindExtensionByNumber(message_type, number).file
        except KeyError:
            raise ReflectionNotFoundError(
                f"extension {number} of message type '{message_type.full_name}' not found"
            ) from None

    @staticmethod
    def _add_files(response: Any, root: FileDescriptor) -> None:
        """Append ``root`` then its transitive imports, breadth first, each once."""
        out = response.file_descriptor_response.file_descriptor_proto
        seen: set[str] = set()
        queue: deque[FileDescriptor] = deque([root])
        while queue:
            file = queue.popleft()
            if file.name in seen:
                continue
            seen.add(file.name)
            out.append(file.serialized_pb)
            queue.extend(file.dependencies)


def enable_reflection(
    server: grpc.aio.Server | GenericHandlers | DecodeChecked,
    service_names: Iterable[str] = SERVICE_NAMES,
    pool: descriptor_pool.DescriptorPool = POOL,
) -> None:
    """Serve ``grpc.reflection.v1`` and ``v1alpha`` on ``server``, answering from ``pool``.

    ``service_names`` is what ``list_services`` answers; each must be defined
    in ``pool`` (ValueError otherwise).
    """
    names = tuple(service_names)
    reflection_v1_pb2_grpc.add_ServerReflectionServicer_to_server(
        ReflectionServicer(reflection_v1_pb2, names, pool), server
    )
    reflection_v1alpha_pb2_grpc.add_ServerReflectionServicer_to_server(
        ReflectionServicer(reflection_v1alpha_pb2, names, pool), server
    )
