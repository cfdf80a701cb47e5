"""The bare Python gRPC ceiling: a grpc.aio KServe v2 server that does no model work.

It answers ModelInfer for any model with a fixed FP32 [1, 10] output and
answers the metadata RPCs perf_analyzer asks for. Benchmarks run it in the same
run as batchwire to measure what batchwire's own layers cost.

``python -m batchwire.bench.bare_server --port 8101``
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import grpc

from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc
from batchwire.protos import model_config_pb2 as mc


class BareServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Answers without looking at the request beyond its name and id."""

    def __init__(self) -> None:
        self._output = bytes(40)

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="bare", version="0")

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        response = pb.ModelMetadataResponse(name=request.name, versions=["1"], platform="bare")
        response.inputs.add(name="INPUT__0", datatype="FP32", shape=[-1, 64])
        response.outputs.add(name="OUTPUT__0", datatype="FP32", shape=[-1, 10])
        return response

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        config = mc.ModelConfig(name=request.name, platform="bare", max_batch_size=64)
        config.input.add(name="INPUT__0", data_type=mc.TYPE_FP32, dims=[64])
        config.output.add(name="OUTPUT__0", data_type=mc.TYPE_FP32, dims=[10])
        return pb.ModelConfigResponse(config=config)

    def _respond(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        response = pb.ModelInferResponse(
            model_name=request.model_name,
            model_version="1",
            id=request.id,
            raw_output_contents=[self._output],
        )
        response.outputs.add(name="OUTPUT__0", datatype="FP32", shape=[1, 10])
        return response

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        return self._respond(request)

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for request in request_iterator:
            yield pb.ModelStreamInferResponse(infer_response=self._respond(request))


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(BareServicer(), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101)
    ns = parser.parse_args(argv)
    from batchwire.server.app import new_event_loop

    loop = new_event_loop()
    loop.run_until_complete(serve(ns.host, ns.port))


if __name__ == "__main__":
    main()
