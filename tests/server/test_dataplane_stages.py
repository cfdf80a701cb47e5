"""What a pipeline stage may do, each shown by a stage of this module on a real server.

Answer without going further (:class:`Refuse`, :class:`Cache`), choose where the
request goes (:class:`Route`), send a copy elsewhere without delaying the answer
(:class:`Shadow`), observe the finished result (:class:`Audit`). Every stage acts
only on requests whose caller sends its header, so one server holds them all; unary
calls and stream messages pass the same stages.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Awaitable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from dataplane_testkit import x_request, y_of

from batchwire.core.errors import InferenceError, StatusCode
from batchwire.core.types import InferenceResult
from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc
from batchwire.server.inference_call import InferenceCall
from batchwire.server.pipeline import Stage, spawn
from batchwire.server.stages import STAGES


def header(call: InferenceCall, key: str) -> str | None:
    """The caller's metadata entry ``key`` (None when absent)."""
    for name, value in call.caller.metadata() or ():
        if name == key:
            return value
    return None


class Refused(InferenceError):
    code = StatusCode.FAILED_PRECONDITION
    reason = "refused"


class Refuse(Stage):
    """Refuses a request whose caller sends ``x-refuse``, before the model is even looked up."""

    __slots__ = ()

    def __call__(self, call: InferenceCall) -> Awaitable[InferenceResult]:
        reason = header(call, "x-refuse")
        if reason is not None:
            raise Refused(f"refused by the test stage: {reason}")
        if header(call, "x-crash") is not None:
            raise RuntimeError("a bug in a stage")
        return self.next(call)


class Route(Stage):
    """Sends a request that names no version to the version in ``x-route-version``."""

    __slots__ = ()

    def __call__(self, call: InferenceCall) -> Awaitable[InferenceResult]:
        version = header(call, "x-route-version")
        if version is not None and not call.version:
            call.version = version
        return self.next(call)


class Shadow(Stage):
    """Sends a copy of a request to the version in ``x-shadow-version``, in the background.

    The copy waits for ``gate`` (a threading.Event the test sets) before it runs, then
    puts (version, Y or status code) on ``copies``.
    """

    __slots__ = ("copies", "gate")

    def __init__(self, gate: threading.Event, copies: queue.Queue) -> None:
        super().__init__()
        self.gate = gate
        self.copies = copies

    def __call__(self, call: InferenceCall) -> Awaitable[InferenceResult]:
        version = header(call, "x-shadow-version")
        if version is not None:
            spawn(self._copy, call.copy(version=version), "test shadow")
        return self.next(call)

    async def _copy(self, copy: InferenceCall) -> InferenceResult:
        await asyncio.to_thread(self.gate.wait)
        try:
            result = await self.next(copy)
        except InferenceError as exc:
            self.copies.put((copy.version, exc.code.value))
            raise
        assert copy.served is not None
        self.copies.put((copy.served.version, float(result.outputs["Y"][0, 0])))
        return result


class Cache(Stage):
    """Answers a request whose caller sends ``x-cache`` from the result of an identical one."""

    __slots__ = ("results",)

    def __init__(self) -> None:
        super().__init__()
        self.results: dict[tuple, InferenceResult] = {}

    async def __call__(self, call: InferenceCall) -> InferenceResult:
        if header(call, "x-cache") is None:
            return await self.next(call)
        assert call.served is not None and call.request is not None
        key = (
            call.served.name,
            call.served.version,
            tuple((name, array.tobytes()) for name, array in call.request.inputs.items()),
        )
        result = self.results.get(key)
        if result is None:
            result = self.results[key] = await self.next(call)
        return result


class Audit(Stage):
    """Records (tag, model, version, request id, outcome) of each request sending ``x-audit``."""

    __slots__ = ("records",)

    def __init__(self, records: list) -> None:
        super().__init__()
        self.records = records

    async def __call__(self, call: InferenceCall) -> InferenceResult:
        tag = header(call, "x-audit")
        if tag is None:
            return await self.next(call)
        try:
            result = await self.next(call)
        except InferenceError as exc:
            self._record(tag, call, exc.code.value)
            raise
        self._record(tag, call, "OK")
        return result

    def _record(self, tag: str, call: InferenceCall, outcome: str) -> None:
        version = "" if call.served is None else call.served.version
        request_id = "" if call.request is None else call.request.id
        self.records.append((tag, call.model, version, request_id, outcome))


class Demo:
    """What the test stages share with the tests (touched from both threads; GIL-safe)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.copies: queue.Queue = queue.Queue()
        self.records: list = []


@pytest.fixture(scope="module")
def demo() -> Demo:
    return Demo()


@pytest.fixture(scope="module")
def stub(
    serve, versioned_repository: Path, demo: Demo
) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    # The default pipeline with the demo stages added where each belongs: one line each.
    stages = (
        lambda plane, model: Audit(demo.records),
        lambda plane, model: Refuse(),
        lambda plane, model: Route(),
        lambda plane, model: Shadow(demo.gate, demo.copies),
        *STAGES[:-1],  # resolve, count rejections, decode, validate
        lambda plane, model: Cache(),
        STAGES[-1],  # submit
    )
    server = serve(versioned_repository, stages)
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def counts(stub, version: str) -> tuple[int, int]:
    """(successes, failures) the server counted for ``versioned`` version ``version``."""
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="versioned", version=version))
    inference = stats.model_stats[0].inference_stats
    return inference.success.count, inference.fail.count


# -- 1. answer without going further ---------------------------------------------------


def test_a_refusing_stage_answers_before_the_model_is_looked_up(stub) -> None:
    before = counts(stub, "2")
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(x_request(1.0), metadata=[("x-refuse", "no key")])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == "refused by the test stage: no key"
    # Placed before Resolve: an unknown model is refused too, not reported missing.
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(x_request(1.0, model="nope"), metadata=[("x-refuse", "no key")])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert counts(stub, "2") == before  # never reached the model, nor its statistics
    assert y_of(stub.ModelInfer(x_request(1.0))) == 3.0


def test_a_caching_stage_answers_without_the_model(stub) -> None:
    successes, failures = counts(stub, "2")
    cached = [("x-cache", "1")]
    answers = [y_of(stub.ModelInfer(x_request(5.0), metadata=cached)) for _ in range(3)]
    assert answers == [7.0, 7.0, 7.0]
    assert counts(stub, "2") == (successes + 1, failures)  # the model ran once
    assert y_of(stub.ModelInfer(x_request(5.0))) == 7.0  # without the header: not cached
    assert counts(stub, "2") == (successes + 2, failures)


def test_a_bug_in_a_stage_is_reported_as_internal(stub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(x_request(1.0), metadata=[("x-crash", "1")])
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details() == "RuntimeError: a bug in a stage"
    (response,) = stub.ModelStreamInfer(
        iter([x_request(1.0, request_id="c")]), metadata=[("x-crash", "1")]
    )
    assert response.error_message == "RuntimeError: a bug in a stage"
    assert response.infer_response.id == "c"


# -- 2. choose where the request goes --------------------------------------------------


def test_a_routing_stage_chooses_the_version(stub) -> None:
    latest = stub.ModelInfer(x_request(10.0))
    assert (latest.model_version, y_of(latest)) == ("2", 12.0)
    routed = stub.ModelInfer(x_request(10.0), metadata=[("x-route-version", "1")])
    assert (routed.model_version, y_of(routed)) == ("1", 11.0)
    # The stage routes only requests that name no version.
    named = stub.ModelInfer(x_request(10.0, version="2"), metadata=[("x-route-version", "1")])
    assert (named.model_version, y_of(named)) == ("2", 12.0)


# -- 3. send a copy elsewhere without delaying the answer ------------------------------


def test_a_shadow_copy_never_delays_the_answer(stub, demo: Demo) -> None:
    answer = stub.ModelInfer(x_request(20.0), metadata=[("x-shadow-version", "1")])
    # Answered by version 2 while the copy for version 1 still waits at the gate.
    assert (answer.model_version, y_of(answer)) == ("2", 22.0)
    assert demo.copies.empty()
    demo.gate.set()
    assert demo.copies.get(timeout=60) == ("1", 21.0)
    # A copy that fails fails alone: the answer is the original request's.
    answer = stub.ModelInfer(x_request(30.0), metadata=[("x-shadow-version", "9")])
    assert y_of(answer) == 32.0
    assert demo.copies.get(timeout=60) == ("9", "NOT_FOUND")


# -- 4. observe the finished result ----------------------------------------------------


def test_an_observing_stage_sees_every_outcome(stub, demo: Demo) -> None:
    tag = [("x-audit", "unary")]
    stub.ModelInfer(x_request(1.0, request_id="ok"), metadata=tag)
    bad = x_request(1.0, request_id="bad")
    bad.inputs[0].shape[:] = [1, 2]
    bad.raw_input_contents[0] = np.zeros((1, 2), np.float32).tobytes()
    for request, extra in (
        (bad, []),
        (x_request(1.0, model="nope", request_id="lost"), []),
        (x_request(1.0, request_id="refused"), [("x-refuse", "audit")]),
    ):
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(request, metadata=tag + extra)
    assert [r for r in demo.records if r[0] == "unary"] == [
        ("unary", "versioned", "2", "ok", "OK"),
        ("unary", "versioned", "2", "bad", "INVALID_ARGUMENT"),
        ("unary", "nope", "", "", "NOT_FOUND"),  # never resolved, never decoded
        ("unary", "versioned", "", "", "FAILED_PRECONDITION"),
    ]


def test_stream_messages_pass_the_same_stages(stub, demo: Demo) -> None:
    bad = x_request(3.0, request_id="s3")
    bad.inputs[0].datatype = "INT32"
    bad.raw_input_contents[0] = np.zeros((1, 1), np.int32).tobytes()
    requests = [x_request(1.0, request_id="s1"), x_request(2.0, request_id="s2"), bad]
    metadata = [("x-audit", "stream"), ("x-route-version", "1")]
    responses = {
        r.infer_response.id: r for r in stub.ModelStreamInfer(iter(requests), metadata=metadata)
    }
    assert {i: y_of(responses[i].infer_response) for i in ("s1", "s2")} == {"s1": 2.0, "s2": 3.0}
    assert "expected datatype FP32, got INT32" in responses["s3"].error_message
    assert sorted(r for r in demo.records if r[0] == "stream") == [
        ("stream", "versioned", "1", "s1", "OK"),
        ("stream", "versioned", "1", "s2", "OK"),
        ("stream", "versioned", "1", "s3", "INVALID_ARGUMENT"),
    ]
    # A refusal answers each message of the stream, which stays open to the end.
    refused = list(stub.ModelStreamInfer(iter(requests[:2]), metadata=[("x-refuse", "stream")]))
    assert sorted(r.infer_response.id for r in refused) == ["s1", "s2"]
    assert {r.error_message for r in refused} == {"refused by the test stage: stream"}
