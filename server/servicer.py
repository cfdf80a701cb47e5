"""The ``inference.GRPCInferenceService`` servicer (KServe v2 / Triton gRPC protocol).

A thin translation layer: decode protobuf, call the data plane or the
registry, encode protobuf. It knows nothing about batching internals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from functools import partial
from typing import TYPE_CHECKING

import grpc
from google.protobuf import json_format

from batchwire import __version__
from batchwire.core.errors import InferenceError, ModelNotFoundError
from batchwire.core.validation import expected_shape
from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc
from batchwire.server.codec import decode_infer_request, encode_infer_response
from batchwire.server.dataplane import DataPlane
from batchwire.server.registry import ServedModel
from batchwire.server.status import GRPC_STATUS
from batchwire.server.stream_flow import StreamFlow
from batchwire.telemetry.tracing import ACTIVE_REQUEST

if TYPE_CHECKING:
    from batchwire.telemetry import Telemetry
    from batchwire.telemetry.tracing import RequestSpan

log = logging.getLogger(__name__)

#: Triton protocol extensions this servicer implements (ServerMetadata reports them).
BASE_EXTENSIONS = ("model_configuration", "model_repository", "schedule_policy", "parameters")
#: Extensions added when the servicer has a Telemetry (ModelStatistics, TraceSetting, LogSettings).
TELEMETRY_EXTENSIONS = ("statistics", "trace", "logging")

_perf_ns = time.perf_counter_ns


_UNREAD = object()


class _NoTracing:
    """Stands in for Tracing when the servicer has no telemetry."""

    armed = False


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Serves every RPC of the inference protocol from one :class:`DataPlane`."""

    def __init__(
        self,
        dataplane: DataPlane,
        *,
        server_name: str = "batchwire",
        extensions: Iterable[str] = BASE_EXTENSIONS,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.registry = dataplane.registry
        self.server_name = server_name
        self.extensions = list(extensions)
        self.telemetry = telemetry
        #: Per request the servicer tests ``self.tracing.armed`` and nothing else when it is False.
        self.tracing = telemetry.tracing if telemetry is not None else _NoTracing()
        if telemetry is not None:
            self.extensions += [e for e in TELEMETRY_EXTENSIONS if e not in self.extensions]
        self.accepting = True

    # Health and metadata -------------------------------------------------

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.accepting and self.registry.all_ready)

    async def ModelReady(self, request, context):
        try:
            served = self.registry.find(request.name, request.version)
        except InferenceError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.accepting and served.ready)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(
            name=self.server_name, version=__version__, extensions=self.extensions
        )

    async def ModelMetadata(self, request, context):
        served = await self._find(request.name, request.version, context)
        spec = served.spec
        response = pb.ModelMetadataResponse(
            name=served.name, versions=self.registry.versions(served.name), platform=spec.platform
        )
        for tensor in spec.inputs:
            response.inputs.add(
                name=tensor.name, datatype=tensor.datatype, shape=expected_shape(spec, tensor)
            )
        for tensor in spec.outputs:
            response.outputs.add(
                name=tensor.name, datatype=tensor.datatype, shape=expected_shape(spec, tensor)
            )
        return response

    async def ModelConfig(self, request, context):
        served = await self._find(request.name, request.version, context)
        return pb.ModelConfigResponse(config=served.config)

    async def _find(self, name: str, version: str, context) -> ServedModel:
        try:
            served = self.registry.find(name, version)
        except InferenceError as exc:
            await context.abort(GRPC_STATUS[exc.code], exc.message)
        if served.spec is None or served.config is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"model '{name}' has no readable configuration"
            )
        return served

    # Inference -----------------------------------------------------------

    async def _infer(
        self,
        msg: pb.ModelInferRequest,
        deadline: float | None,
        span: RequestSpan | None = None,
        pipelined: bool = False,
    ) -> pb.ModelInferResponse:
        served = self.dataplane.resolve(msg.model_name, msg.model_version)
        try:
            request, datatypes = decode_infer_request(msg, served.spec, deadline)
            if pipelined:
                request.pipelined = True
            if span is not None:
                span.request = request
                span.version = served.version
                request.trace_context = span.ids
            result = await self.dataplane.infer(served, request, datatypes)
        except InferenceError as exc:
            # Counts what the batcher did not report already (decode, validation).
            if self.telemetry is not None:
                self.telemetry.request_rejected(served.name, served.version, exc)
            raise
        if span is not None:
            span.send_ns = _perf_ns()
        return encode_infer_response(served.spec, msg.id, result)

    async def _infer_traced(
        self,
        msg: pb.ModelInferRequest,
        deadline: float | None,
        span: RequestSpan,
        pipelined: bool = False,
    ) -> pb.ModelInferResponse:
        """:meth:`_infer` inside ``span`` (active for log records), then record its spans."""
        token = ACTIVE_REQUEST.set(span.ids)
        try:
            response = await self._infer(msg, deadline, span, pipelined)
        except BaseException as exc:
            self.tracing.finish(span, exc)
            raise
        finally:
            ACTIVE_REQUEST.reset(token)
        self.tracing.finish(span)
        return response

    async def ModelInfer(self, request, context):
        try:
            tracing = self.tracing
            if tracing.armed:
                span = tracing.start(
                    request.model_name,
                    tracing.extract(context.invocation_metadata()),
                    "ModelInfer",
                )
                if span is not None:
                    return await self._infer_traced(request, _deadline(context), span)
            return await self._infer(request, _deadline(context))
        except InferenceError as exc:
            await context.abort(GRPC_STATUS[exc.code], exc.message)
        except Exception as exc:  # never let a bug take the connection down silently
            log.exception("ModelInfer failed for model '%s'", request.model_name)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Run the stream's requests concurrently; answer each as it completes.

        Responses come in completion order (as in Triton); the request ``id``
        matches them up. A failed request yields ``error_message`` and the
        stream stays open. Concurrency: one reader task feeds the batcher, and
        this generator is the only writer.
        """
        deadline = _deadline(context)
        done: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        in_flight = 0
        reading = True
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
                message = (
                    exc.message
                    if isinstance(exc, InferenceError)
                    else f"{type(exc).__name__}: {exc}"
                )
                done.put_nowait(
                    pb.ModelStreamInferResponse(
                        error_message=message,
                        infer_response=pb.ModelInferResponse(
                            model_name=msg.model_name, model_version=msg.model_version, id=msg.id
                        ),
                    )
                )
            if not reading and in_flight == 0:
                done.put_nowait(None)

        tasks: set[asyncio.Task] = set()
        tracing = self.tracing
        parent: object = _UNREAD  # the caller's span context, read once per stream

        def infer(msg: pb.ModelInferRequest, pipelined: bool):  # type: ignore[no-untyped-def]
            nonlocal parent
            if tracing.armed:
                if parent is _UNREAD:
                    parent = tracing.extract(context.invocation_metadata())
                span = tracing.start(msg.model_name, parent, "ModelStreamInfer")
                if span is not None:
                    return self._infer_traced(msg, deadline, span, pipelined)
            return self._infer(msg, deadline, None, pipelined)

        async def read() -> None:
            nonlocal in_flight, reading
            try:
                async for msg in request_iterator:
                    in_flight += 1
                    task = asyncio.ensure_future(infer(msg, flow.read()))
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
            await reader
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    # Repository ----------------------------------------------------------

    async def RepositoryIndex(self, request, context):
        response = pb.RepositoryIndexResponse()
        for served in self.registry.index():
            if request.ready and not served.ready:
                continue
            response.models.add(
                name=served.name,
                version=served.version,
                state=served.state.value,
                reason=served.reason,
            )
        return response

    async def RepositoryModelLoad(self, request, context):
        if request.parameters:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "RepositoryModelLoad parameters (config or file overrides) are not supported; "
                f"got {sorted(request.parameters)}",
            )
        try:
            await self.registry.load(request.model_name)
        except InferenceError as exc:
            await context.abort(GRPC_STATUS[exc.code], exc.message)
        except Exception as exc:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"failed to load '{request.model_name}': {exc}"
            )
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        try:
            await self.registry.unload(request.model_name)
        except ModelNotFoundError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, exc.message)
        return pb.RepositoryModelUnloadResponse()

    # Observability -------------------------------------------------------

    async def ModelStatistics(self, request, context):
        telemetry = self.telemetry
        if telemetry is None:
            await self._unsupported(context, "ModelStatistics", "statistics are not collected")
        if request.name:
            try:
                self.registry.find(request.name, request.version)
            except ModelNotFoundError as exc:
                await context.abort(grpc.StatusCode.NOT_FOUND, exc.message)
            except InferenceError:
                pass  # known but not loadable: reported with whatever it collected
            versions = (
                [request.version] if request.version else self.registry.versions(request.name)
            )
            keys = [(request.name, v) for v in versions]
        else:
            keys = [(m.name, m.version) for m in self.registry.index() if m.version and m.ready]
        response = pb.ModelStatisticsResponse()
        for name, version in keys:
            stats = telemetry.statistics(name, version)
            if stats is not None:
                json_format.ParseDict(stats, response.model_stats.add())
        return response

    async def TraceSetting(self, request, context):
        telemetry = self.telemetry
        if telemetry is None:
            await self._unsupported(context, "TraceSetting", "tracing is not available")
        from batchwire.telemetry.tracing import TraceSettingError

        model = request.model_name
        if model:
            try:
                self.registry.find(model)
            except ModelNotFoundError as exc:
                await context.abort(grpc.StatusCode.NOT_FOUND, exc.message)
            except InferenceError:
                pass
        tracing = telemetry.tracing
        try:
            if request.settings:
                changes = {key: list(value.value) for key, value in request.settings.items()}
                settings = tracing.update_settings(model, changes)
                log.info("trace settings%s updated: %s", f" of '{model}'" if model else "", changes)
            else:
                settings = tracing.get_settings(model)
        except TraceSettingError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        response = pb.TraceSettingResponse()
        for key, values in settings.items():
            response.settings[key].value.extend(values)
        return response

    async def LogSettings(self, request, context):
        telemetry = self.telemetry
        if telemetry is None:
            await self._unsupported(context, "LogSettings", "set the level with --log-level")
        from batchwire.telemetry.logs import LogSettingError

        try:
            if request.settings:
                changes = {}
                for key, value in request.settings.items():
                    choice = value.WhichOneof("parameter_choice")
                    changes[key] = None if choice is None else getattr(value, choice)
                settings = telemetry.logs.update(changes)
            else:
                settings = telemetry.logs.get()
        except LogSettingError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        response = pb.LogSettingsResponse()
        for key, value in settings.items():
            field = {bool: "bool_param", int: "uint32_param", str: "string_param"}[type(value)]
            setattr(response.settings[key], field, value)
        return response

    # Not implemented -----------------------------------------------------

    async def _unsupported(self, context, what: str, hint: str) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"batchwire does not implement {what}; {hint}"
        )

    async def SystemSharedMemoryStatus(self, request, context):
        await self._shared_memory(context)

    async def SystemSharedMemoryRegister(self, request, context):
        await self._shared_memory(context)

    async def SystemSharedMemoryUnregister(self, request, context):
        await self._shared_memory(context)

    async def CudaSharedMemoryStatus(self, request, context):
        await self._shared_memory(context)

    async def CudaSharedMemoryRegister(self, request, context):
        await self._shared_memory(context)

    async def CudaSharedMemoryUnregister(self, request, context):
        await self._shared_memory(context)

    async def _shared_memory(self, context) -> None:
        await self._unsupported(
            context, "shared-memory tensors", "send tensor data in raw_input_contents"
        )
