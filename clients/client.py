"""Synchronous client for the KServe v2 / Triton gRPC inference protocol."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from batchwire.clients import _calls
from batchwire.clients._calls import InferResult, ParameterValue
from batchwire.clients.errors import InferenceServerError
from batchwire.clients.tensors import InputsLike
from batchwire.clients.tls import PathLike, tls_credentials
from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import health_pb2_grpc, model_config_pb2
from batchwire.protos.grpc_service_pb2_grpc import GRPCInferenceServiceStub

__all__ = ["InferenceClient"]

T = TypeVar("T")


class InferenceClient:
    """A blocking client of a batchwire (or Triton) gRPC inference server.

    Tensors go in and come out as numpy arrays; failed calls raise
    :class:`InferenceServerError`. Use as a context manager, or call
    :meth:`close`. Thread-safe: one client can serve many threads.

    Args:
        address: ``host:port`` (a ``grpc://`` prefix is accepted).
        timeout: default deadline of every call, in seconds (None: no deadline).
        max_message_bytes: largest message sent or received.
        channel_options: extra ``(name, value)`` gRPC channel options.
        credentials: channel credentials for TLS (plaintext when None and no
            TLS argument below is given).
        headers: gRPC metadata sent with every call (e.g. Triton's restricted
            protocol header); a call's own ``headers`` win where both name a key.
        token: bearer token, sent with every call as ``authorization: Bearer
            <token>``; never logged nor shown by ``repr``. Over a plaintext
            channel anyone on the path can read it: use TLS beyond loopback.
        ssl: connect with TLS (tritonclient's name; implied by any file below).
        root_certificates: PEM file of the CAs to trust (default: the system's).
        private_key: PEM file of the client's private key (mutual TLS).
        certificate_chain: PEM file of the client's certificate (mutual TLS).

    The TLS files are read here; one that cannot be used raises
    :class:`~batchwire.clients.tls.CertificateFileError` naming it (see
    :mod:`batchwire.clients.tls`). Invalid headers or token raise ``ValueError``.
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
        # Checked before the channel exists: a bad argument leaves no open channel behind.
        self._metadata = _calls.client_metadata(headers, token)
        credentials = tls_credentials(
            credentials, ssl, root_certificates, private_key, certificate_chain
        )
        self.tls = credentials is not None
        options = _calls.channel_options(max_message_bytes, channel_options)
        if credentials is None:
            self._channel = grpc.insecure_channel(self.address, options=options)
        else:
            self._channel = grpc.secure_channel(self.address, credentials, options=options)
        # The generated stubs carry no annotations: their methods are looked up by name.
        self._stubs: dict[str, Any] = {
            "inference": GRPCInferenceServiceStub(self._channel),
            "health": health_pb2_grpc.HealthStub(self._channel),
        }

    def __repr__(self) -> str:
        # Header names only: values (the token above all) may be secrets.
        names = [key for key, _ in self._metadata]
        return f"InferenceClient({self.address!r}, tls={self.tls}, headers={names})"

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; pending calls are cancelled."""
        self._channel.close()

    def _invoke(self, call: _calls.Call[T]) -> T:
        method = getattr(self._stubs[call.service], call.method)
        timeout = self.timeout if call.timeout is None else call.timeout
        try:
            response = method(
                call.request,
                timeout=timeout,
                metadata=_calls.merge_metadata(self._metadata, call.metadata),
            )
        except grpc.RpcError as exc:
            raise InferenceServerError.from_rpc_error(exc) from exc
        return call.convert(response)

    def server_live(self) -> bool:
        """True when the server is live."""
        return self._invoke(_calls.server_live())

    def server_ready(self) -> bool:
        """True when the server is ready to serve."""
        return self._invoke(_calls.server_ready())

    def model_ready(self, name: str, version: str = "") -> bool:
        """True when model ``name`` (``version``, default: the server's choice) is ready."""
        return self._invoke(_calls.model_ready(name, version))

    def server_metadata(self) -> pb.ServerMetadataResponse:
        """The server's name, version and extensions."""
        return self._invoke(_calls.server_metadata())

    def model_metadata(self, name: str, version: str = "") -> pb.ModelMetadataResponse:
        """The model's versions, platform and input / output tensor metadata."""
        return self._invoke(_calls.model_metadata(name, version))

    def model_config(self, name: str, version: str = "") -> model_config_pb2.ModelConfig:
        """The model's configuration."""
        return self._invoke(_calls.model_config(name, version))

    def model_statistics(self, name: str = "", version: str = "") -> pb.ModelStatisticsResponse:
        """Inference statistics of one model, or of all models when ``name`` is empty."""
        return self._invoke(_calls.model_statistics(name, version))

    def repository_index(self, ready: bool = False) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        """The models in the repository (only the ready ones if ``ready``)."""
        return self._invoke(_calls.repository_index(ready))

    def health(self, service: str = "") -> str:
        """grpc.health.v1 status of ``service`` ("" = the server): ``"SERVING"``,
        ``"NOT_SERVING"`` ...; an unknown service raises NOT_FOUND."""
        return self._invoke(_calls.health(service))

    def infer(
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
        """Run one inference request.

        Args:
            model: model name.
            inputs: ``{name: array}``, or a sequence of :class:`InferInput`
                (or ``(name, array[, datatype])`` tuples).
            outputs: names of the outputs to return (default: all).
            version: model version (default: the server's choice).
            request_id: echoed back as :attr:`InferResult.id`.
            priority: queue priority level (request parameter ``"priority"``).
            timeout_us: queue timeout in microseconds (request parameter ``"timeout"``).
            parameters: further request parameters (bool, int, float or str).
            datatypes: v2 datatype per input name, overriding inference from
                the dtype (e.g. ``{"x": "BF16"}``).
            deadline: gRPC deadline of this call in seconds (default: the client's).
            headers: gRPC metadata to send (e.g. ``traceparent``), on top of the
                client's own.
        """
        return self._invoke(
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

    def stream_infer(
        self,
        model: str,
        requests: Iterable[InputsLike],
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
    ) -> Iterator[InferResult | InferenceServerError]:
        """Stream requests over one ``ModelStreamInfer`` call, yielding results as they arrive.

        Each item of ``requests`` holds one request's inputs (as for
        :meth:`infer`) and is sent with request id ``str(index)``, which the
        result's ``id`` echoes (responses may arrive out of order). ``requests``
        is consumed lazily, on a gRPC thread. A stream ``error_message`` raises
        :class:`InferenceServerError` (ending the stream), or is yielded in place
        of a result when ``raise_on_error`` is False. ``deadline`` bounds the
        whole stream. Closing the generator early cancels the call.
        """
        builder = _calls.StreamRequests(
            model,
            outputs=outputs,
            version=version,
            priority=priority,
            timeout_us=timeout_us,
            parameters=parameters,
            datatypes=datatypes,
        )

        def request_iterator() -> Iterator[pb.ModelInferRequest]:
            index = 0
            try:
                for item in requests:
                    yield builder.build(index, item)
                    index += 1
            except Exception as exc:
                builder.failed(exc)
                raise

        call = self._stubs["inference"].ModelStreamInfer(
            request_iterator(),
            timeout=self.timeout if deadline is None else deadline,
            metadata=_calls.merge_metadata(self._metadata, _calls.to_metadata(headers)),
        )
        try:
            for response in call:
                yield _calls.stream_result(response, raise_on_error)
            if builder.error is not None:
                raise builder.error
        except grpc.RpcError as exc:
            if builder.error is not None:
                raise builder.error from exc
            raise InferenceServerError.from_rpc_error(exc) from exc
        finally:
            call.cancel()
