"""One inference request on its way through the data plane, and what a front end supplies.

A front end builds one :class:`InferenceCall` per request it receives and hands it
to :meth:`batchwire.server.dataplane.DataPlane.infer`. The call carries the wire
message untouched; the pipeline's stages fill in the rest (the resolved model
version, the decoded request, the trace span) as the request passes them. Three
things come from the front end:

- a :class:`Codec`, which turns the wire message into an
  :class:`~batchwire.core.types.InferenceRequest` and a result into the wire
  response (the pipeline calls it at the right points, so a request's span covers
  both and a refused request is never decoded);
- a :class:`Caller`: who sent the request (its metadata, connection and
  authenticated principal), shared by every request of one unary call or of one
  stream (the trace context is read from it at most once);
- the model name and version the message addresses, the caller's deadline on the
  ``time.monotonic()`` clock, and whether the caller pipelines (a stream with
  several requests in flight, see :mod:`batchwire.server.stream_flow`).

Nothing here imports a protocol, the batcher or telemetry: a front end imports this
module and :mod:`batchwire.server.dataplane` only (checked by the import-linter
contracts in pyproject.toml). Loop thread only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from batchwire.core.spec import ModelSpec
    from batchwire.core.types import InferenceRequest, InferenceResult
    from batchwire.server.registry import ServedModel
    from batchwire.telemetry.tracing import RequestSpan

__all__ = ["UNREAD", "Caller", "Codec", "InferenceCall"]

#: :attr:`Caller.trace_parent` before the caller's metadata has been read.
UNREAD: Any = object()

#: Reads the caller's metadata: (key, value) pairs, lower-case keys (gRPC invocation
#: metadata, HTTP headers), or None when there is none.
MetadataReader = Callable[[], "Iterable[tuple[str, str]] | None"]


class Codec(Protocol):
    """How one front end's wire messages become requests, and results become responses.

    Both are called on the event loop, once per request, by the pipeline: ``decode``
    once the model version is resolved (so an unknown model is reported as such,
    whatever the message holds), ``encode`` once the result is known.
    """

    def decode(
        self, message: Any, spec: ModelSpec, deadline: float | None
    ) -> tuple[InferenceRequest, dict[str, str]]:
        """The request ``message`` carries and the v2 datatype declared for each input.

        Raises :class:`~batchwire.core.errors.InvalidInputError` (or another
        InferenceError) when the message is malformed; checking the request against
        the model is the pipeline's job, not the codec's.
        """
        ...

    def encode(self, message: Any, spec: ModelSpec, result: InferenceResult) -> Any:
        """The wire response to ``message`` holding ``result``'s outputs."""
        ...

    def routing_key(self, message: Any) -> str:
        """The request's ``routing_key`` parameter ("" when it has none), read only for
        models with a traffic split; InvalidInputError when it is not a string."""
        ...

    def request_id(self, message: Any) -> str:
        """The id the caller gave the request ("" when none), without decoding it
        (the audit log names refused requests by it too)."""
        ...


class Caller:
    """Who sent a request: one per unary call, one per stream (shared by its requests).

    ``method`` names the operation in spans (``ModelInfer``, ``ModelStreamInfer``).
    ``metadata`` is read lazily: only when a stage needs it (tracing reads the
    ``traceparent``/``tracestate`` entries once, when tracing is on), so a front end
    passes a reader, never the metadata itself. Stages may cache what they derive
    from the caller here (:attr:`trace_parent` is tracing's).
    """

    __slots__ = ("metadata", "method", "peer", "principal", "trace_parent")

    def __init__(
        self,
        method: str,
        metadata: MetadataReader,
        peer: Callable[[], str] = str,
        principal: str = "",
    ) -> None:
        self.method = method
        self.metadata = metadata
        #: Reads the caller's connection identity (gRPC's ``context.peer()``, e.g.
        #: ``ipv4:127.0.0.1:51234``): the same string for every call of one connection.
        self.peer = peer
        #: The authenticated principal's name (batchwire.server.access), set by the
        #: front end from the transport's credentials; empty when none is configured.
        self.principal = principal
        #: The caller's span context once read (None: it sent none); UNREAD before.
        self.trace_parent: Any = UNREAD


class InferenceCall:
    """One request in flight: what the front end gave, and what the stages found so far.

    Set by the front end: ``message``, ``codec``, ``caller``, ``model``,
    ``version`` (empty: the latest ready one), ``deadline``, ``pipelined``.
    Set by stages, in pipeline order: ``version`` may be rewritten by a routing
    stage before resolution; ``served`` by the resolve stage; ``request`` and
    ``datatypes`` by the decode stage; ``span`` by the pipeline when the request is
    traced (None otherwise). Slotted: one small object per request, nothing else.
    """

    __slots__ = (
        "caller",
        "codec",
        "copy_of",
        "datatypes",
        "deadline",
        "message",
        "model",
        "pipelined",
        "request",
        "served",
        "span",
        "version",
    )

    def __init__(
        self,
        message: Any,
        codec: Codec,
        caller: Caller,
        model: str,
        version: str = "",
        deadline: float | None = None,
        pipelined: bool = False,
    ) -> None:
        self.message = message
        self.codec = codec
        self.caller = caller
        self.model = model
        self.version = version
        self.deadline = deadline
        self.pipelined = pipelined
        self.served: ServedModel | None = None
        self.request: InferenceRequest | None = None
        self.datatypes: dict[str, str] | None = None
        self.span: RequestSpan | None = None
        #: The call this one copies (:meth:`copy`, a shadow copy); None for the caller's.
        self.copy_of: InferenceCall | None = None

    def copy(self, model: str | None = None, version: str | None = None) -> InferenceCall:
        """A fresh call for the same message (for a shadow copy), to ``model``/``version``.

        Nothing resolved or decoded is carried over; the copy shares the caller and,
        when traced, the span (its batch spans then link to the original request's span).
        """
        twin = InferenceCall(
            self.message,
            self.codec,
            self.caller,
            self.model if model is None else model,
            self.version if version is None else version,
            self.deadline,
            self.pipelined,
        )
        twin.span = self.span
        twin.copy_of = self
        return twin
