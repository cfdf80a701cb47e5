"""The ``inference.GRPCInferenceService`` servicer (KServe v2 / Triton gRPC protocol).

A translation layer and nothing else: protobuf in, the
:class:`~batchwire.server.dataplane.DataPlane`'s protocol-neutral call, protobuf
out. Errors are reported in one place (:func:`~batchwire.server.status.
reports_errors`): a method raises, the decorator picks the status. Model lookup,
validation, batching, tracing and statistics are the data plane's; this module does
not import the batcher (an import-linter contract in pyproject.toml checks it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from functools import partial
from typing import TYPE_CHECKING

import grpc
from google.protobuf import json_format

from batchwire.core.errors import InferenceError
from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc
from batchwire.server.access import CURRENT_PRINCIPAL
from batchwire.server.codec import GRPC_CODEC, stream_error_response
from batchwire.server.inference_call import Caller, InferenceCall
from batchwire.server.status import GRPC_STATUS, Undecodable, describe, reports_errors
from batchwire.server.stream_flow import StreamFlow

if TYPE_CHECKING:
    from batchwire.server.dataplane import DataPlane

log = logging.getLogger(__name__)

#: What a stream's answer to an undecodable request echoes (no model name, no id).
_NO_REQUEST = pb.ModelInferRequest()

#: LogSettings values: the InferParameter field for each Python type.
_LOG_FIELDS = {bool: "bool_param", int: "uint32_param", str: "string_param"}


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


@reports_errors
class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Serves every RPC of the inference protocol from one :class:`DataPlane`."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    # Health and metadata -------------------------------------------------

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.dataplane.server_live())

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.dataplane.server_ready())

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(
            ready=self.dataplane.model_ready(request.name, request.version)
        )

    async def ServerMetadata(self, request, context):
        meta = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta.name, version=meta.version, extensions=meta.extensions
        )

    async def ModelMetadata(self, request, context):
        meta = self.dataplane.model_metadata(request.name, request.version)
        response = pb.ModelMetadataResponse(
            name=meta.name, versions=meta.versions, platform=meta.platform
        )
        for tensor in meta.inputs:
            response.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        for tensor in meta.outputs:
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        return response

    async def ModelConfig(self, request, context):
        config = self.dataplane.model_config(request.name, request.version)
        return pb.ModelConfigResponse(config=config)

    # Inference -----------------------------------------------------------

    def ModelInfer(self, request, context) -> Awaitable[pb.ModelInferResponse]:
        # A plain function handing back the data plane's coroutine: one coroutine frame
        # less per request (reports_errors awaits it).
        return self.dataplane.infer(
            InferenceCall(
                request,
                GRPC_CODEC,
                Caller(
                    "ModelInfer",
                    context.invocation_metadata,
                    context.peer,
                    CURRENT_PRINCIPAL.get(),
                ),
                request.model_name,
                request.model_version,
                _deadline(context),
            )
        )

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Run the stream's requests concurrently; answer each as it completes.

        Responses come in completion order (as in Triton); the request ``id``
        matches them up. A failed request yields ``error_message`` and the
        stream stays open; so does a message that does not decode (its answer has no
        model name and no id: nothing of it could be read). Concurrency: one reader task feeds the data plane, and
        this generator is the only writer.

        The stream ends with OK once the caller has closed its side and every
        request is answered. When the server shuts down, requests read from then
        on are refused in-stream (UNAVAILABLE's message), and once every request is
        answered the stream ends with status UNAVAILABLE, so that the caller
        reconnects to another replica rather than taking OK for "nothing more".
        """
        done: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        in_flight = 0
        reading = True
        closing = False  # the server is shutting down

        def shutting_down() -> None:
            nonlocal closing
            closing = True
            if in_flight == 0:
                done.put_nowait(None)

        try:
            release = self.dataplane.open_stream(shutting_down)
        except InferenceError as exc:  # past --max-open-streams or shutting down
            await context.abort(GRPC_STATUS[exc.code], describe(exc))
        deadline = _deadline(context)
        caller = Caller(
            "ModelStreamInfer", context.invocation_metadata, context.peer, CURRENT_PRINCIPAL.get()
        )
        infer = self.dataplane.infer
        flow = StreamFlow()  # does the caller send without waiting for answers?

        def finish(msg: pb.ModelInferRequest, task: asyncio.Task) -> None:
            # The task's one done callback (each callback costs a trip through the loop).
            nonlocal in_flight
            tasks.discard(task)
            in_flight -= 1
            if task.cancelled():
                return
            exc = task.exception()
            if exc is None:
                done.put_nowait(pb.ModelStreamInferResponse(infer_response=task.result()))
            else:
                if not isinstance(exc, InferenceError):
                    log.error("stream request for '%s' failed", msg.model_name, exc_info=exc)
                done.put_nowait(stream_error_response(msg, describe(exc)))
            if in_flight == 0 and (closing or not reading):
                done.put_nowait(None)

        tasks: set[asyncio.Task] = set()

        async def read() -> None:
            nonlocal in_flight, reading
            try:
                async for msg in request_iterator:
                    if type(msg) is Undecodable:  # answered in-stream; the stream goes on
                        flow.read()
                        done.put_nowait(stream_error_response(_NO_REQUEST, msg.message))
                        continue
                    in_flight += 1
                    call = InferenceCall(
                        msg,
                        GRPC_CODEC,
                        caller,
                        msg.model_name,
                        msg.model_version,
                        deadline,
                        flow.read(),
                    )
                    task = asyncio.ensure_future(infer(call))
                    tasks.add(task)
                    task.add_done_callback(partial(finish, msg))
            finally:
                reading = False
                if in_flight == 0:
                    done.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (response := await done.get()) is not None:
                flow.sent()
                yield response
            if reading:  # ended by the shutdown, not by the caller
                error = self.dataplane.shutting_down_error()
                await context.abort(GRPC_STATUS[error.code], describe(error))
            await reader
        finally:
            release()
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    # Repository ----------------------------------------------------------

    async def RepositoryIndex(self, request, context):
        response = pb.RepositoryIndexResponse()
        for row in self.dataplane.repository_index(ready_only=request.ready):
            response.models.add(
                name=row.name, version=row.version, state=row.state, reason=row.reason
            )
        return response

    async def RepositoryModelLoad(self, request, context):
        parameters = {
            key: None if choice is None else getattr(value, choice)
            for key, value in request.parameters.items()
            for choice in (value.WhichOneof("parameter_choice"),)
        }
        await self.dataplane.load_model(request.model_name, parameters)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        await self.dataplane.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # Observability -------------------------------------------------------

    async def ModelStatistics(self, request, context):
        response = pb.ModelStatisticsResponse()
        for stats in self.dataplane.statistics(request.name, request.version):
            json_format.ParseDict(stats, response.model_stats.add())
        return response

    async def TraceSetting(self, request, context):
        changes = {key: list(value.value) for key, value in request.settings.items()}
        settings = self.dataplane.trace_settings(request.model_name, changes)
        response = pb.TraceSettingResponse()
        for key, values in settings.items():
            response.settings[key].value.extend(values)
        return response

    async def LogSettings(self, request, context):
        changes = {}
        for key, value in request.settings.items():
            choice = value.WhichOneof("parameter_choice")
            changes[key] = None if choice is None else getattr(value, choice)
        settings = self.dataplane.log_settings(changes)
        response = pb.LogSettingsResponse()
        for key, value in settings.items():
            setattr(response.settings[key], _LOG_FIELDS[type(value)], value)
        return response

    # Shared memory -------------------------------------------------------

    async def SystemSharedMemoryStatus(self, request, context):
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self.dataplane.shared_memory.status(request.name):
            response.regions[region.name].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=region.name,
                    key=region.key,
                    offset=region.offset,
                    byte_size=region.byte_size,
                )
            )
        return response

    async def SystemSharedMemoryRegister(self, request, context):
        self.dataplane.shared_memory.register(
            request.name, request.key, request.offset, request.byte_size
        )
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request, context):
        self.dataplane.shared_memory.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(self, request, context):
        self.dataplane.shared_memory.cuda_status(request.name)
        return pb.CudaSharedMemoryStatusResponse()

    async def CudaSharedMemoryRegister(self, request, context):
        self.dataplane.shared_memory.cuda_register(request.name)
        return pb.CudaSharedMemoryRegisterResponse()

    async def CudaSharedMemoryUnregister(self, request, context):
        self.dataplane.shared_memory.cuda_unregister(request.name)
        return pb.CudaSharedMemoryUnregisterResponse()
