"""What the sync and asyncio clients share: requests, response conversion, results.

Each client method builds a :class:`Call` here (which RPC, the request, how to
turn the response into the return value) and only performs the I/O itself, so
:class:`~batchwire.clients.client.InferenceClient` and
:class:`~batchwire.clients.aio.AsyncInferenceClient` stay thin and identical.

Metadata: a client's own ``headers`` (and ``token``, as ``authorization: Bearer
<token>``) go with every call, unary and streaming; a call's ``headers`` are added to
them and win where both name a key (:func:`merge_metadata`). Header names and values
are checked before anything is sent (:func:`to_metadata`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from batchwire.clients.errors import InferenceServerError
from batchwire.clients.tensors import InputsLike, add_inputs, decode_outputs
from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import health_pb2, model_config_pb2

T = TypeVar("T")

#: Python values accepted as request parameters (or a ready ``InferParameter``).
ParameterValue = bool | int | float | str | pb.InferParameter
Metadata = tuple[tuple[str, str], ...]

_INT64_MAX = 2**63 - 1
_SCHEMES = ("grpc://", "http://")
#: The header a bearer token goes in (what Triton's and batchwire's servers read).
AUTHORIZATION = "authorization"
# What gRPC accepts in (lower-cased) metadata keys and in text values.
_HEADER_KEY = re.compile(r"[0-9a-z_.-]+")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")
_TOKEN = re.compile(r"[\x21-\x7e]+")


def normalize_address(address: str) -> str:
    """Strip a ``grpc://`` / ``http://`` scheme and trailing slash from ``address``."""
    for scheme in _SCHEMES:
        if address.startswith(scheme):
            address = address[len(scheme) :]
    return address.rstrip("/")


def channel_options(
    max_message_bytes: int, extra: Sequence[tuple[str, Any]] | None
) -> list[tuple[str, Any]]:
    """Channel options: message size limits, then ``extra`` (which may override them)."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
    if extra:
        overridden = {name for name, _ in extra}
        options = [opt for opt in options if opt[0] not in overridden] + list(extra)
    return options


def to_metadata(headers: Mapping[str, str] | None) -> Metadata | None:
    """gRPC call metadata from a header mapping (keys lower-cased, as gRPC requires).

    Raises ``ValueError`` naming a key gRPC would refuse (letters, digits, ``-``,
    ``_`` and ``.`` only; no ``-bin`` keys, whose values are bytes) or whose value is
    not printable ASCII; the value itself is never repeated, as it may be a secret.
    gRPC's own refusal says only "Invalid metadata".
    """
    if not headers:
        return None
    metadata = tuple((key.lower(), str(value)) for key, value in headers.items())
    for key, value in metadata:
        if not _HEADER_KEY.fullmatch(key) or key.endswith("-bin"):
            raise ValueError(
                f"header name {key!r} is not a valid gRPC metadata key: expected letters, "
                "digits, '-', '_' or '.', not ending in '-bin'"
            )
        if not _HEADER_VALUE.fullmatch(value):
            raise ValueError(
                f"the value of header {key!r} is not valid gRPC metadata: expected "
                "printable ASCII (no line breaks or non-ASCII characters)"
            )
    return metadata


def client_metadata(headers: Mapping[str, str] | None, token: str | None) -> Metadata:
    """The metadata a client sends with every call: ``headers``, plus
    ``authorization: Bearer <token>`` when ``token`` is given (surrounding whitespace
    dropped, as in a token pasted from a file).

    Raises ``ValueError`` for an invalid header (see :func:`to_metadata`), a token that
    is not printable ASCII without spaces, or a token given as well as an
    ``authorization`` header. No message repeats the token.
    """
    metadata = to_metadata(headers) or ()
    token = token.strip() if token is not None else ""
    if not token:
        return metadata
    if not _TOKEN.fullmatch(token):
        raise ValueError("the token must be printable ASCII without spaces")
    if any(key == AUTHORIZATION for key, _ in metadata):
        raise ValueError("give the token either as token or as an 'authorization' header, not both")
    return (*metadata, (AUTHORIZATION, f"Bearer {token}"))


def merge_metadata(base: Metadata, extra: Metadata | None) -> Metadata | None:
    """``base`` (a client's own metadata) with ``extra`` (one call's) added; a key in
    both is sent with ``extra``'s value only. None when there is nothing to send."""
    if not extra:
        return base or None
    if not base:
        return extra
    overridden = {key for key, _ in extra}
    return tuple(pair for pair in base if pair[0] not in overridden) + extra


def to_parameter(value: ParameterValue) -> pb.InferParameter:
    """An ``InferParameter`` for a Python value (bool, int, float or str)."""
    if isinstance(value, pb.InferParameter):
        return value
    if isinstance(value, (bool, np.bool_)):
        return pb.InferParameter(bool_param=bool(value))
    if isinstance(value, (int, np.integer)):
        value = int(value)
        if value > _INT64_MAX:
            return pb.InferParameter(uint64_param=value)
        return pb.InferParameter(int64_param=value)
    if isinstance(value, (float, np.floating)):
        return pb.InferParameter(double_param=float(value))
    if isinstance(value, str):
        return pb.InferParameter(string_param=value)
    raise TypeError(f"parameter values must be bool, int, float or str, got {type(value).__name__}")


def from_parameter(parameter: pb.InferParameter) -> bool | int | float | str | None:
    """The Python value of an ``InferParameter`` (None when unset)."""
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def from_parameters(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """A dict of Python values from a protobuf parameter map."""
    return {key: from_parameter(value) for key, value in parameters.items()}


@dataclass
class InferResult:
    """The decoded outcome of one inference request.

    ``outputs`` maps each output name to a numpy array (read-only views of the
    response bytes; BF16 as ``uint16`` bit patterns), ``datatypes`` to its v2
    datatype. ``response`` is the raw ``ModelInferResponse``.
    """

    outputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    model_name: str
    model_version: str
    id: str
    parameters: dict[str, Any] = field(default_factory=dict)
    response: pb.ModelInferResponse | None = field(default=None, repr=False)

    @classmethod
    def from_response(cls, response: pb.ModelInferResponse) -> InferResult:
        """Decode a ``ModelInferResponse``."""
        return cls(
            outputs=decode_outputs(response),
            datatypes={tensor.name: tensor.datatype for tensor in response.outputs},
            model_name=response.model_name,
            model_version=response.model_version,
            id=response.id,
            parameters=from_parameters(response.parameters),
            response=response,
        )

    def as_numpy(self, name: str) -> np.ndarray:
        """The output called ``name``; raises ``KeyError`` naming the outputs present."""
        try:
            return self.outputs[name]
        except KeyError:
            raise KeyError(
                f"no output {name!r} in the response; outputs: {sorted(self.outputs)}"
            ) from None


@dataclass(frozen=True)
class Call(Generic[T]):
    """One unary RPC: the service stub and method, the request, and the result converter."""

    method: str
    request: Any
    convert: Callable[[Any], T]
    service: str = "inference"  # or "health"
    timeout: float | None = None  # overrides the client default when set
    metadata: Metadata | None = None


def server_live() -> Call[bool]:
    """``ServerLive``: True when the server is live."""
    return Call("ServerLive", pb.ServerLiveRequest(), lambda r: r.live)


def server_ready() -> Call[bool]:
    """``ServerReady``: True when the server is ready."""
    return Call("ServerReady", pb.ServerReadyRequest(), lambda r: r.ready)


def model_ready(name: str, version: str = "") -> Call[bool]:
    """``ModelReady``: True when that model (version) is ready."""
    return Call("ModelReady", pb.ModelReadyRequest(name=name, version=version), lambda r: r.ready)


def server_metadata() -> Call[pb.ServerMetadataResponse]:
    """``ServerMetadata``: the response proto."""
    return Call("ServerMetadata", pb.ServerMetadataRequest(), lambda r: r)


def model_metadata(name: str, version: str = "") -> Call[pb.ModelMetadataResponse]:
    """``ModelMetadata``: the response proto."""
    return Call("ModelMetadata", pb.ModelMetadataRequest(name=name, version=version), lambda r: r)


def model_config(name: str, version: str = "") -> Call[model_config_pb2.ModelConfig]:
    """``ModelConfig``: the ``ModelConfig`` proto."""
    return Call(
        "ModelConfig", pb.ModelConfigRequest(name=name, version=version), lambda r: r.config
    )


def model_statistics(name: str = "", version: str = "") -> Call[pb.ModelStatisticsResponse]:
    """``ModelStatistics``: the response proto (all models when ``name`` is empty)."""
    return Call(
        "ModelStatistics", pb.ModelStatisticsRequest(name=name, version=version), lambda r: r
    )


def repository_index(
    ready: bool = False,
) -> Call[list[pb.RepositoryIndexResponse.ModelIndex]]:
    """``RepositoryIndex``: the models (only ready ones if ``ready``)."""
    return Call("RepositoryIndex", pb.RepositoryIndexRequest(ready=ready), lambda r: list(r.models))


def health(service: str = "") -> Call[str]:
    """grpc.health.v1 ``Check``: the serving status name (``"SERVING"`` ...)."""
    return Call(
        "Check",
        health_pb2.HealthCheckRequest(service=service),
        lambda r: health_pb2.HealthCheckResponse.ServingStatus.Name(r.status),
        service="health",
    )


def build_infer_request(
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
) -> pb.ModelInferRequest:
    """A ``ModelInferRequest``; ``priority`` and ``timeout_us`` become the Triton
    ``"priority"`` and ``"timeout"`` (microseconds) int64 request parameters."""
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for key, value in (parameters or {}).items():
        request.parameters[key].CopyFrom(to_parameter(value))
    if priority is not None:
        request.parameters["priority"].int64_param = int(priority)
    if timeout_us is not None:
        request.parameters["timeout"].int64_param = int(timeout_us)
    add_inputs(request, inputs, datatypes)
    for name in outputs or ():
        request.outputs.add(name=name)
    return request


def infer(
    model: str,
    inputs: InputsLike,
    *,
    deadline: float | None = None,
    headers: Mapping[str, str] | None = None,
    **request_fields: Any,
) -> Call[InferResult]:
    """``ModelInfer`` with a decoded :class:`InferResult`."""
    return Call(
        "ModelInfer",
        build_infer_request(model, inputs, **request_fields),
        InferResult.from_response,
        timeout=deadline,
        metadata=to_metadata(headers),
    )


class StreamRequests:
    """Builds the stream's requests: item ``i`` becomes a request with id ``str(i)``.

    Records the first exception raised while building (a bad input, or the
    caller's iterable failing) so the client can re-raise it instead of the
    opaque cancellation gRPC reports.
    """

    def __init__(self, model: str, **request_fields: Any) -> None:
        self.model = model
        self.request_fields = request_fields
        self.error: BaseException | None = None

    def build(self, index: int, inputs: InputsLike) -> pb.ModelInferRequest:
        """The request for the ``index``-th item of the caller's iterable."""
        try:
            return build_infer_request(
                self.model, inputs, request_id=str(index), **self.request_fields
            )
        except BaseException as exc:
            self.error = exc
            raise

    def failed(self, exc: BaseException) -> None:
        """Record an exception raised by the caller's iterable."""
        if self.error is None:
            self.error = exc


def stream_result(
    response: pb.ModelStreamInferResponse, raise_on_error: bool
) -> InferResult | InferenceServerError:
    """An :class:`InferResult`, or for an ``error_message`` entry an
    :class:`InferenceServerError` (raised if ``raise_on_error``, else returned)."""
    if response.error_message:
        error = InferenceServerError.from_stream_message(
            response.error_message, response.infer_response.id
        )
        if raise_on_error:
            raise error
        return error
    return InferResult.from_response(response.infer_response)
