"""asyncio client for the KServe v2 / Triton gRPC inference protocol (over ``grpc.aio``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from batchwire.clients import _calls
from batchwire.clients._calls import InferResult, ParameterValue
from batchwire.clients.errors import InferenceServerError
from batchwire.clients.tensors import InputsLike
from batchwire.clients.tls import PathLike, tls_credentials
from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import health_pb2_grpc, model_config_pb2
from batchwire.protos.grpc_service_pb2_grpc import GRPCInferenceServiceStub

__all__ = ["AsyncInferenceClient"]

T = TypeVar("T")


class AsyncInferenceClient:
    """The asyncio twin of :class:`~batchwire.clients.InferenceClient`.

    Same constructor and methods, as coroutines (``stream_infer`` is an async
    generator). The channel is opened on first use, in the running event loop,
    so the client must be used from one loop; TLS files, headers and token are
    checked in the constructor all the same. Use ``async with`` or await
    :meth:`close`.
    """

    def __init__(
        self,
        address: str = "127.0.0.1:8001",
        *,
        timeout: float | None = None,
        max_message_bytes: int = 2**31 - 1,
        channel_options: Sequence[tuple[str, Any]] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
        ssl: bool = False,
        root_certificates: PathLike | None = None,
        private_key: PathLike | None = None,
        certificate_chain: PathLike | None = None,
    ) -> None:
        self.address = _calls.normalize_address(address)
        self.timeout = timeout
        self._metadata = _calls.client_metadata(headers, token)
        self._options = _calls.channel_options(max_message_bytes, channel_options)
        self._credentials = tls_credentials(
            credentials, ssl, root_certificates, private_key, certificate_chain
        )
        self.tls = self._credentials is not None
        self._channel: grpc.aio.Channel | None = None
        self._stubs: dict[str, Any] = {}

    def __repr__(self) -> str:
        # Header names only: values (the token above all) may be secrets.
        names = [key for key, _ in self._metadata]
        return f"AsyncInferenceClient({self.address!r}, tls={self.tls}, headers={names})"

    async def __aenter__(self) -> AsyncInferenceClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; pending calls are cancelled."""
        if self._channel is not None:
            channel, self._channel = self._channel, None
            self._stubs = {}
            await channel.close()

    def _stub(self, service: str) -> Any:
        if self._channel is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.address, options=self._options)
            else:
                self._channel = grpc.aio.secure_channel(
                    self.address, self._credentials, options=self._options
                )
            self._stubs = {
                "inference": GRPCInferenceServiceStub(self._channel),
                "health": health_pb2_grpc.HealthStub(self._channel),
            }
        return self._stubs[service]

    async def _invoke(self, call: _calls.Call[T]) -> T:
        method = getattr(self._stub(call.service), call.method)
        timeout = self.timeout if call.timeout is None else call.timeout
        try:
            response = await method(
                call.request,
                timeout=timeout,
                metadata=_calls.merge_metadata(self._metadata, call.metadata),
            )
        except grpc.RpcError as exc:
            raise InferenceServerError.from_rpc_error(exc) from exc
        return call.convert(response)

    async def server_live(self) -> bool:
        """True when the server is live."""
        return await self._invoke(_calls.server_live())

    async def server_ready(self) -> bool:
        """True when the server is ready to serve."""
        return await self._invoke(_calls.server_ready())

    async def model_ready(self, name: str, version: str = "") -> bool:
        """True when model ``name`` (``version``, default: the server's choice) is ready."""
        return await self._invoke(_calls.model_ready(name, version))

    async def server_metadata(self) -> pb.ServerMetadataResponse:
        """The server's name, version and extensions."""
        return await self._invoke(_calls.server_metadata())

    async def model_metadata(self, name: str, version: str = "") -> pb.ModelMetadataResponse:
        """The model's versions, platform and input / output tensor metadata."""
        return await self._invoke(_calls.model_metadata(name, version))

    async def model_config(self, name: str, version: str = "") -> model_config_pb2.ModelConfig:
        """The model's configuration."""
        return await self._invoke(_calls.model_config(name, version))

    async def model_statistics(
        self, name: str = "", version: str = ""
    ) -> pb.ModelStatisticsResponse:
        """Inference statistics of one model, or of all models when ``name`` is empty."""
        return await self._invoke(_calls.model_statistics(name, version))

    async def repository_index(
        self, ready: bool = False
    ) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        """The models in the repository (only the ready ones if ``ready``)."""
        return await self._invoke(_calls.repository_index(ready))

    async def health(self, service: str = "") -> str:
        """grpc.health.v1 status of ``service`` ("" = the server): ``"SERVING"``,
        ``"NOT_SERVING"`` ...; an unknown service raises NOT_FOUND."""
        return await self._invoke(_calls.health(service))

    async def infer(
        self,
        model: str,
        inputs: InputsLike,
        *,
        outputs: Sequence[str] | None = None,
        version: str = "",
        request_id: str = "",
        priority: int | None = None,
        timeout_us: int | None = None,
        parameters: Mapping[str, ParameterValue] | None = None,
        datatypes: Mapping[str, str] | None = None,
        deadline: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> InferResult:
        """Run one inference request; see :meth:`InferenceClient.infer`."""
        return await self._invoke(
            _calls.infer(
                model,
                inputs,
                outputs=outputs,
                version=version,
                request_id=request_id,
                priority=priority,
                timeout_us=timeout_us,
                parameters=parameters,
                datatypes=datatypes,
                deadline=deadline,
                headers=headers,
            )
        )

    async def stream_infer(
        self,
        model: str,
        requests: Iterable[InputsLike] | AsyncIterable[InputsLike],
        *,
        outputs: Sequence[str] | None = None,
        version: str = "",
        priority: int | None = None,
        timeout_us: int | None = None,
        parameters: Mapping[str, ParameterValue] | None = None,
        datatypes: Mapping[str, str] | None = None,
        deadline: float | None = None,
        headers: Mapping[str, str] | None = None,
        raise_on_error: bool = True,
    ) -> AsyncIterator[InferResult | InferenceServerError]:
        """Stream requests over one ``ModelStreamInfer`` call; see
        :meth:`InferenceClient.stream_infer`. ``requests`` may be a sync or an
        async iterable. Close the generator (``contextlib.aclosing``) to cancel
        the call early."""
        builder = _calls.StreamRequests(
            model,
            outputs=outputs,
            version=version,
            priority=priority,
            timeout_us=timeout_us,
            parameters=parameters,
            datatypes=datatypes,
        )

        async def request_iterator() -> AsyncIterator[pb.ModelInferRequest]:
            index = 0
            try:
                if isinstance(requests, AsyncIterable):
                    async for item in requests:
                        yield builder.build(index, item)
                        index += 1
                else:
                    for item in requests:
                        yield builder.build(index, item)
                        index += 1
            except Exception as exc:
                builder.failed(exc)
                raise

        call = self._stub("inference").ModelStreamInfer(
            request_iterator(),
            timeout=self.timeout if deadline is None else deadline,
            metadata=_calls.merge_metadata(self._metadata, _calls.to_metadata(headers)),
        )
        try:
            async for response in call:
                yield _calls.stream_result(response, raise_on_error)
            if builder.error is not None:
                raise builder.error
        except grpc.RpcError as exc:
            if builder.error is not None:
                raise builder.error from exc
            raise InferenceServerError.from_rpc_error(exc) from exc
        except asyncio.CancelledError:
            # gRPC cancels the call when the request iterator fails: report why.
            if builder.error is not None:
                raise builder.error from None
            raise
        finally:
            call.cancel()
