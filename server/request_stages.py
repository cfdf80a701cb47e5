"""The stages every inference request passes: resolve, count rejections, decode, validate, submit.

Each is one small job; their order is :data:`batchwire.server.stages.STAGES`. All but
:class:`CountRejections` only act before passing the call on, so they are plain
functions returning the next stage's awaitable (no coroutine per stage and request);
:class:`Submit` ends every chain.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

from batchwire.core.errors import InferenceError, ModelNotReadyError
from batchwire.core.validation import validate_request
from batchwire.server.pipeline import Stage

if TYPE_CHECKING:
    from batchwire.core.types import InferenceResult
    from batchwire.server.dataplane import DataPlane
    from batchwire.server.inference_call import InferenceCall

__all__ = ["CountRejections", "Decode", "Resolve", "Submit", "Validate", "count_rejections"]


class Resolve(Stage):
    """``call.model`` and ``call.version`` -> ``call.served``, the ready model version.

    An empty version selects the latest ready one. Raises ModelNotFoundError (unknown
    model or version) or ModelNotReadyError (not ready), from the registry.
    """

    __slots__ = ("_get",)

    def __init__(self, plane: DataPlane, model: str | None) -> None:
        super().__init__()
        self._get = plane.registry.get

    def __call__(self, call: InferenceCall) -> Awaitable[InferenceResult]:
        call.served = self._get(call.model, call.version)
        return self.next(call)


class CountRejections(Stage):
    """Counts a failed request in its model version's statistics unless the batcher did.

    Covers every failure after resolution: decode, validation, refusals by later
    stages (the statistics' observer counts each error once, so failures the batcher
    reported already are not counted twice). Only in chains of a data plane with
    telemetry (see :func:`count_rejections`).
    """

    __slots__ = ("_rejected",)

    def __init__(self, plane: DataPlane, model: str | None) -> None:
        super().__init__()
        assert plane.telemetry is not None
        self._rejected = plane.telemetry.request_rejected

    async def __call__(self, call: InferenceCall) -> InferenceResult:
        try:
            return await self.next(call)
        except InferenceError as exc:
            served = call.served
            if served is not None:
                self._rejected(served.name, served.version, exc)
            raise


def count_rejections(plane: DataPlane, model: str | None) -> Stage | None:
    """:class:`CountRejections` where there are statistics to count in, else nothing."""
    return None if plane.telemetry is None else CountRejections(plane, model)


class Decode(Stage):
    """The wire message -> ``call.request`` and ``call.datatypes``, by the front end's codec.

    Carries the call's options onto the request: its deadline, whether the caller
    pipelines, and the trace context when the request is traced. A copy of a call (a
    shadow's) is given its model's lowest priority level, when the model has levels.
    """

    __slots__ = ()

    def __init__(self, plane: DataPlane, model: str | None) -> None:
        super().__init__()

    def __call__(self, call: InferenceCall) -> Awaitable[InferenceResult]:
        # After Resolve: call.served is set (no assert: this runs once per request).
        spec = call.served.spec  # type: ignore[union-attr]
        request, call.datatypes = call.codec.decode(call.message, spec, call.deadline)  # type: ignore[arg-type]
        if call.pipelined:
            request.pipelined = True
        if call.copy_of is not None:
            # A copy (a shadow's) queues at its model's lowest priority level, behind
            # every request a caller waits for (no levels: the one queue, as any request).
            batching = spec.batching  # type: ignore[union-attr]
            if batching is not None and batching.priority_levels:
                request.priority = batching.priority_levels
        span = call.span
        if span is not None:
            request.trace_context = span.ids
        call.request = request
        return self.next(call)


class Validate(Stage):
    """Checks ``call.request`` against the model's inputs and outputs (InvalidInputError)."""

    __slots__ = ()

    def __init__(self, plane: DataPlane, model: str | None) -> None:
        super().__init__()

    def __call__(self, call: InferenceCall) -> Awaitable[InferenceResult]:
        # After Decode: served, request and datatypes are set.
        validate_request(call.served.spec, call.request, call.datatypes)  # type: ignore[union-attr,arg-type]
        return self.next(call)


class Submit(Stage):
    """Hands ``call.request`` to the model version's batcher; the result is the batcher's.

    The last stage of every chain. A version that lost its batcher since it was
    resolved was replaced by a reload (or unloaded) while the request was in a stage
    that waits: the request is resolved once more, against the model version that
    serves now (checked against that version's inputs if its configuration differs),
    so a reload never fails a request that was already on its way. Raises
    ModelNotReadyError when nothing serves it any more, else what the batcher raises.
    """

    __slots__ = ("_get",)

    def __init__(self, plane: DataPlane, model: str | None) -> None:
        super().__init__()
        self._get = plane.registry.get

    def __call__(self, call: InferenceCall) -> Awaitable[InferenceResult]:
        served = call.served
        batcher = served.batcher  # type: ignore[union-attr]
        if batcher is None:
            return self._resolved_again(call)
        return batcher.submit(call.request)  # type: ignore[arg-type]

    def _resolved_again(self, call: InferenceCall) -> Awaitable[InferenceResult]:
        served = call.served
        assert served is not None
        again = self._get(call.model, call.version)
        batcher = again.batcher
        if batcher is None:
            raise ModelNotReadyError(
                f"model '{served.name}' version '{served.version}' is not ready"
            )
        if again.spec != served.spec:
            validate_request(again.spec, call.request, call.datatypes)  # type: ignore[arg-type]
        call.served = again
        return batcher.submit(call.request)  # type: ignore[arg-type]
