"""A minimal grpc.aio inference server that echoes inputs back, for client tests.

It speaks our generated ``inference.GRPCInferenceService`` and serves:

* ``echo`` (max_batch_size 8): every input comes back as an output of the same
  name, datatype, shape and bytes, whatever its name or datatype. Its metadata
  declares one input ``IN_<DATATYPE>`` per v2 datatype (for ``--random``).
* ``fixed`` (max_batch_size 0): metadata declares ``X`` FP32 ``[2, -1]``.

Request parameters steer it: ``sleep_s`` (double) delays the response,
``fail`` (string) fails the request with INVALID_ARGUMENT, ``typed`` (bool)
answers with typed ``contents`` instead of ``raw_output_contents``. Request
parameters and ``x-*`` call metadata are copied into the response parameters.
``ModelStatistics`` is left unimplemented. grpc.health.v1 ``Check`` answers
SERVING for "" and the inference service, NOT_FOUND for anything else.

Runs in a background thread with its own event loop, on 127.0.0.1, port 0.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import grpc
import grpc.aio

from batchwire.clients.tensors import decode_tensor, encode_contents
from batchwire.core.datatypes import NUMPY_DTYPES, V2_TO_CONFIG
from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc, health_pb2, health_pb2_grpc, model_config_pb2

ECHO_INPUTS = {f"IN_{datatype}": datatype for datatype in NUMPY_DTYPES}
# Vary the shapes: a fixed dim, a variable dim, or none.
ECHO_SHAPES = {
    name: [-1, 3] if index % 3 == 0 else [-1, -1] if index % 3 == 1 else [-1]
    for index, name in enumerate(ECHO_INPUTS)
}
MODELS: dict[str, tuple[int, dict[str, tuple[str, list[int]]]]] = {
    "echo": (8, {name: (dt, ECHO_SHAPES[name]) for name, dt in ECHO_INPUTS.items()}),
    "fixed": (0, {"X": ("FP32", [2, -1])}),
}
SERVER_NAME = "echo-server"
SERVER_VERSION = "0.0.1"


def _not_found(model: str) -> str:
    return f"Request for unknown model: '{model}' is not found"


class EchoServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """Echoes every input tensor back; see the module docstring."""

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):
        if request.name not in MODELS:
            await context.abort(grpc.StatusCode.NOT_FOUND, _not_found(request.name))
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=SERVER_VERSION, extensions=["echo"]
        )

    async def ModelMetadata(self, request, context):
        if request.name not in MODELS:
            await context.abort(grpc.StatusCode.NOT_FOUND, _not_found(request.name))
        _, tensors = MODELS[request.name]
        meta = [
            pb.ModelMetadataResponse.TensorMetadata(name=name, datatype=dt, shape=shape)
            for name, (dt, shape) in tensors.items()
        ]
        return pb.ModelMetadataResponse(
            name=request.name, versions=["1"], platform="echo", inputs=meta, outputs=meta
        )

    async def ModelConfig(self, request, context):
        if request.name not in MODELS:
            await context.abort(grpc.StatusCode.NOT_FOUND, _not_found(request.name))
        max_batch_size, tensors = MODELS[request.name]
        config = model_config_pb2.ModelConfig(
            name=request.name, platform="echo", max_batch_size=max_batch_size
        )
        for name, (dt, shape) in tensors.items():
            dims = shape[1:] if max_batch_size else shape
            data_type = model_config_pb2.DataType.Value(V2_TO_CONFIG[dt])
            config.input.add(name=name, data_type=data_type, dims=dims)
            config.output.add(name=name, data_type=data_type, dims=dims)
        return pb.ModelConfigResponse(config=config)

    async def RepositoryIndex(self, request, context):
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(name=name, version="1", state="READY")
                for name in MODELS
            ]
        )

    async def _respond(
        self, request: pb.ModelInferRequest, metadata: tuple = ()
    ) -> pb.ModelInferResponse:
        """The echo response, or raises ValueError / LookupError for a bad request."""
        if request.model_name not in MODELS:
            raise LookupError(_not_found(request.model_name))
        params = request.parameters
        if "sleep_s" in params:
            await asyncio.sleep(params["sleep_s"].double_param)
        if "fail" in params:
            raise ValueError(params["fail"].string_param)
        if len(request.raw_input_contents) != len(request.inputs):
            raise ValueError("echo server expects raw_input_contents for every input")
        typed = "typed" in params and params["typed"].bool_param
        wanted = [output.name for output in request.outputs]
        names = [tensor.name for tensor in request.inputs]
        for name in wanted:
            if name not in names:
                raise ValueError(f"unexpected inference output '{name}'")
        response = pb.ModelInferResponse(
            model_name=request.model_name, model_version="1", id=request.id
        )
        for key, value in params.items():
            response.parameters[key].CopyFrom(value)
        for key, value in metadata:
            if key.startswith("x-"):
                response.parameters[key].string_param = str(value)
        for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
            if wanted and tensor.name not in wanted:
                continue
            # Validates the request tensor (datatype, byte size) on the way.
            array = decode_tensor(tensor.datatype, tensor.shape, raw)
            out = response.outputs.add(
                name=tensor.name, datatype=tensor.datatype, shape=tensor.shape
            )
            if typed:
                out.contents.CopyFrom(encode_contents(array, tensor.datatype))
            else:
                response.raw_output_contents.append(raw)
        return response

    async def ModelInfer(self, request, context):
        try:
            return await self._respond(request, tuple(context.invocation_metadata() or ()))
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0]))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def ModelStreamInfer(
        self, request_iterator, context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        metadata = tuple(context.invocation_metadata() or ())
        async for request in request_iterator:
            try:
                response = await self._respond(request, metadata)
            except (LookupError, ValueError) as exc:
                yield pb.ModelStreamInferResponse(
                    error_message=str(exc.args[0]),
                    infer_response=pb.ModelInferResponse(
                        model_name=request.model_name, id=request.id
                    ),
                )
            else:
                yield pb.ModelStreamInferResponse(infer_response=response)


class EchoHealth(health_pb2_grpc.HealthServicer):
    """grpc.health.v1: SERVING for the server and the inference service."""

    async def Check(self, request, context):
        if request.service not in ("", "inference.GRPCInferenceService"):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class EchoServer:
    """The echo server on a background thread; ``start()`` returns ``host:port``."""

    def __init__(self) -> None:
        self.address = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> str:
        """Start serving; blocks until the port is bound."""
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="echo-server", daemon=True
        )
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("echo server did not start within 30 s")
        if self._error is not None:
            raise RuntimeError("echo server failed to start") from self._error
        return self.address

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(ready))
        except BaseException as exc:
            self._error = exc
            ready.set()
        finally:
            loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", 2**31 - 1),
                ("grpc.max_receive_message_length", 2**31 - 1),
            ]
        )
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(EchoServicer(), server)
        health_pb2_grpc.add_HealthServicer_to_server(EchoHealth(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self.address = f"127.0.0.1:{port}"
        ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.stop(grace=None)

    def __enter__(self) -> EchoServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
