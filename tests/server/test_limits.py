"""Limits: requests in flight (server, connection), streams per connection, input and message size.

Requests are kept in flight deterministically by model ``hold``: every execution waits
for the test's gate (a threading.Event shared through ``sys.modules``: the server runs
in this process) while later requests queue behind it. The tests wait for the server's
own in-flight counts (:func:`batchwire.server.limits.in_flight`) before each step, so
no step depends on timing.
"""

from __future__ import annotations

import queue
import struct
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from dataplane_testkit import chain_stages, x_request, y_of
from testsupport import start_server, write_python_model

from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc
from batchwire.server.app import ServerThread
from batchwire.server.limits import Admit, InFlight, in_flight

#: The module model ``hold`` finds its gate in (see the module docstring).
GATE_MODULE = "_batchwire_test_limits_gate"

MODEL_IO = """
max_batch_size: 8
input { name: "X" data_type: TYPE_FP32 dims: [ 1 ] }
output { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }
instance_group { count: 1 kind: KIND_CPU }
"""

HOLD_SOURCE = f'''
import sys

GATE = sys.modules["{GATE_MODULE}"]


class BatchwireModel:
    """Y = X, once the test opens the gate (one instance: later requests queue)."""

    def load(self, spec, device, instance_index):
        pass

    def execute(self, inputs):
        GATE.opened.wait(30.0)
        return {{"Y": inputs["X"]}}
'''

FAST_SOURCE = '''
class BatchwireModel:
    """Y = X at once."""

    def load(self, spec, device, instance_index):
        pass

    def execute(self, inputs):
        return {"Y": inputs["X"]}
'''

LIMIT = 1024

CAPPED_CONFIG = f"""
name: "capped"
backend: "python"
max_batch_size: 0
input {{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] }}
input {{ name: "S" data_type: TYPE_STRING dims: [ -1 ] optional: true }}
output {{ name: "Y" data_type: TYPE_FP32 dims: [ -1 ] }}
parameters {{ key: "batchwire.max_input_bytes" value: {{ string_value: "{LIMIT}" }} }}
"""

BAD_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input {{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] }}
output {{ name: "Y" data_type: TYPE_FP32 dims: [ -1 ] }}
parameters {{ key: "batchwire.max_input_bytes" value: {{ string_value: "{value}" }} }}
"""

#: Model name -> the bad value of its parameter, and what the load error says of it.
BAD_VALUES = {
    "bad_text": ("1 MiB", "'1 MiB' is not an integer"),
    "bad_zero": ("0", "must be >= 1, got 0"),
    "bad_negative": ("-5", "must be >= 1, got -5"),
}

PER_CONNECTION = 2
SERVER_WIDE = 3

#: ``new()`` -> a stub on a connection of its own (the ``channels`` fixture).
NewStub = Callable[[], pb_grpc.GRPCInferenceServiceStub]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("limits-repo")
    for name, source in (("hold", HOLD_SOURCE), ("fast", FAST_SOURCE)):
        config = f'name: "{name}"\nbackend: "python"\n{MODEL_IO}'
        write_python_model(root, name, config, source)
    write_python_model(root, "capped", CAPPED_CONFIG, FAST_SOURCE)
    for name, (value, _) in BAD_VALUES.items():
        write_python_model(root, name, BAD_CONFIG.format(name=name, value=value), FAST_SOURCE)
    return root


@pytest.fixture(scope="module")
def opened() -> Iterator[threading.Event]:
    """The gate of model ``hold``: requests pass while it is set."""
    event = threading.Event()
    event.set()
    sys.modules[GATE_MODULE] = types.SimpleNamespace(opened=event)  # type: ignore[assignment]
    yield event
    event.set()
    del sys.modules[GATE_MODULE]


@pytest.fixture(scope="module")
def limited(repository: Path, opened: threading.Event) -> Iterator[ServerThread]:
    """A server capping requests in flight: 2 per connection, 3 in all."""
    server = start_server(
        repository,
        max_inflight_requests=SERVER_WIDE,
        max_inflight_requests_per_connection=PER_CONNECTION,
    )
    try:
        # The counts exist once a chain has been built: on the first request.
        with grpc.insecure_channel(server.address) as channel:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(x_request(0.0, model="fast"))
        yield server
    finally:
        opened.set()
        server.stop()


@pytest.fixture
def gate(opened: threading.Event, limited: ServerThread) -> Iterator[threading.Event]:
    """Closes ``hold``'s gate for one test; opens it after, once nothing is in flight."""
    opened.clear()
    try:
        yield opened
    finally:
        opened.set()
        wait_in_flight(limited, 0)


@pytest.fixture
def channels(limited: ServerThread) -> Iterator[NewStub]:
    """``new()`` -> a stub on a new channel (a connection of its own), closed after the test."""
    opened: list[grpc.Channel] = []

    def new() -> pb_grpc.GRPCInferenceServiceStub:
        # Channels to one address share a connection unless each keeps its own pool.
        channel = grpc.insecure_channel(
            limited.address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        opened.append(channel)
        return pb_grpc.GRPCInferenceServiceStub(channel)

    yield new
    for channel in opened:
        channel.close()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` if it never does."""
    give_up = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > give_up:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.002)


def counts_of(server: ServerThread) -> InFlight:
    counts = in_flight(server.server.dataplane)  # type: ignore[arg-type]
    assert counts is not None, "the server has no admit stage"
    return counts


def wait_in_flight(server: ServerThread, total: int) -> None:
    counts = counts_of(server)
    wait_until(lambda: counts.total == total, f"{total} requests in flight")


def refusal(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def assert_connection_refused(error: grpc.RpcError) -> None:
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == (
        f"this connection has {PER_CONNECTION} inference requests in flight, its limit "
        f"(--max-inflight-requests-per-connection={PER_CONNECTION}); retry later or spread "
        "requests over more connections"
    )


def assert_server_refused(error: grpc.RpcError) -> None:
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == (
        f"the server has {SERVER_WIDE} inference requests in flight, its limit "
        f"(--max-inflight-requests={SERVER_WIDE}); retry later"
    )


class Stream:
    """One ModelStreamInfer call: :meth:`send` requests, read :meth:`next` answers, :meth:`close`."""

    def __init__(self, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
        self._requests: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()
        self.call = stub.ModelStreamInfer(iter(self._requests.get, None))
        self.answers: queue.Queue[pb.ModelStreamInferResponse | grpc.RpcError | None] = (
            queue.Queue()
        )
        self.answered = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for answer in self.call:
                self.answered.set()
                self.answers.put(answer)
        except grpc.RpcError as exc:
            self.answers.put(exc)
        self.answers.put(None)

    def send(self, request: pb.ModelInferRequest) -> None:
        self._requests.put(request)

    def next(self) -> pb.ModelStreamInferResponse:
        answer = self.answers.get(timeout=20)
        assert isinstance(answer, pb.ModelStreamInferResponse), f"expected an answer, got {answer}"
        return answer

    def close(self) -> None:
        """Half-close, then wait for the server to end the call."""
        self._requests.put(None)
        self._reader.join(timeout=20)
        assert not self._reader.is_alive(), "the stream did not end"

    def end(self) -> grpc.RpcError | None:
        """What ended the call: None when it ended cleanly, else its error.

        Half-closes first, so that gRPC's thread sending the requests never waits for more.
        """
        self._requests.put(None)
        while (answer := self.answers.get(timeout=20)) is not None:
            if isinstance(answer, grpc.RpcError):
                return answer
        return None


# -- the stage ------------------------------------------------------------------------


def test_the_admit_stage_is_in_the_chain_only_when_a_cap_is_set(
    limited: ServerThread, serve, versioned_repository: Path
) -> None:
    with grpc.insecure_channel(limited.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert y_of(stub.ModelInfer(x_request(4.0, model="fast"))) == 4.0
    chain = limited.server.dataplane.pipeline.chains["fast"]  # type: ignore[union-attr]
    assert type(next(chain_stages(chain))) is Admit

    plain = serve(versioned_repository)
    with grpc.insecure_channel(plain.address) as channel:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(x_request(0.0))
    plane = plain.server.dataplane
    assert not any(isinstance(s, Admit) for s in chain_stages(plane.pipeline.chains["versioned"]))
    assert in_flight(plane) is None


# -- requests in flight ---------------------------------------------------------------


def test_a_connection_at_its_cap_is_refused_while_another_is_served(
    limited: ServerThread, gate: threading.Event, channels: NewStub
) -> None:
    first, second = channels(), channels()
    held = [first.ModelInfer.future(x_request(float(i), model="hold")) for i in range(2)]
    wait_in_flight(limited, 2)
    assert_connection_refused(refusal(lambda: first.ModelInfer(x_request(9.0, model="fast"))))
    # Another connection is still let in (and waits its turn at the model).
    held.append(second.ModelInfer.future(x_request(2.0, model="hold")))
    wait_in_flight(limited, 3)
    gate.set()
    assert [y_of(call.result(timeout=20)) for call in held] == [0.0, 1.0, 2.0]
    assert y_of(first.ModelInfer(x_request(5.0, model="fast"))) == 5.0
    wait_in_flight(limited, 0)
    assert counts_of(limited).by_connection == {}


def test_the_server_cap_holds_across_connections(
    limited: ServerThread, gate: threading.Event, channels: NewStub
) -> None:
    first, second, third = channels(), channels(), channels()
    held = [first.ModelInfer.future(x_request(float(i), model="hold")) for i in range(2)]
    held.append(second.ModelInfer.future(x_request(2.0, model="hold")))
    wait_in_flight(limited, SERVER_WIDE)
    # The third connection holds nothing, the second one less than its cap: the server's cap.
    assert_server_refused(refusal(lambda: third.ModelInfer(x_request(9.0, model="fast"))))
    assert_server_refused(refusal(lambda: second.ModelInfer(x_request(9.0, model="fast"))))
    # Admission comes before the model is looked up: unknown names are capped too.
    assert_server_refused(refusal(lambda: third.ModelInfer(x_request(9.0, model="nope"))))
    gate.set()
    assert [y_of(call.result(timeout=20)) for call in held] == [0.0, 1.0, 2.0]
    assert y_of(third.ModelInfer(x_request(7.0, model="fast"))) == 7.0
    wait_in_flight(limited, 0)


def test_each_request_of_a_stream_counts_for_its_connection(
    limited: ServerThread, gate: threading.Event, channels: NewStub
) -> None:
    stub = channels()
    stream = Stream(stub)
    for i in range(PER_CONNECTION):
        stream.send(x_request(float(i), model="hold", request_id=f"held-{i}"))
    wait_in_flight(limited, PER_CONNECTION)
    # The stream's requests fill its connection: the next one on it is refused in the
    # stream (which stays open), and so is a unary call on the same connection.
    stream.send(x_request(9.0, model="fast", request_id="over"))
    refused = stream.next()
    assert refused.infer_response.id == "over"
    assert "this connection has 2 inference requests in flight" in refused.error_message
    assert "--max-inflight-requests-per-connection=2" in refused.error_message
    assert_connection_refused(refusal(lambda: stub.ModelInfer(x_request(9.0, model="fast"))))
    gate.set()
    answers = {a.infer_response.id: a for a in (stream.next(), stream.next())}
    assert sorted(answers) == ["held-0", "held-1"]
    assert all(not a.error_message for a in answers.values())
    stream.send(x_request(3.0, model="fast", request_id="after"))
    after = stream.next()
    assert after.infer_response.id == "after" and y_of(after.infer_response) == 3.0
    stream.close()
    assert stream.end() is None
    wait_in_flight(limited, 0)


def test_counts_return_to_zero_after_errors_and_cancellations(
    limited: ServerThread, gate: threading.Event, channels: NewStub
) -> None:
    stub = channels()
    counts = counts_of(limited)

    def nothing_in_flight() -> None:
        wait_until(lambda: counts.total == 0 and not counts.by_connection, "nothing in flight")

    # Failures at any stage release their counts.
    assert refusal(lambda: stub.ModelInfer(x_request(1.0, model="nope"))).code() == (
        grpc.StatusCode.NOT_FOUND
    )
    bad = x_request(1.0, model="fast")
    bad.inputs[0].shape[:] = [1, 2]
    bad.raw_input_contents[0] = np.zeros(2, np.float32).tobytes()
    assert refusal(lambda: stub.ModelInfer(bad)).code() == grpc.StatusCode.INVALID_ARGUMENT
    nothing_in_flight()

    # A call the client cancels while the model holds it.
    running = stub.ModelInfer.future(x_request(1.0, model="hold"))
    wait_in_flight(limited, 1)
    assert running.cancel()
    nothing_in_flight()

    # A call whose deadline passes while it waits behind the held one (still running).
    late = refusal(lambda: stub.ModelInfer(x_request(2.0, model="hold"), timeout=0.5))
    assert late.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    nothing_in_flight()

    # A stream the client cancels with requests queued.
    stream = Stream(stub)
    for i in range(PER_CONNECTION):
        stream.send(x_request(float(i), model="hold"))
    wait_in_flight(limited, PER_CONNECTION)
    stream.call.cancel()
    ended = stream.end()
    assert ended is not None and ended.code() == grpc.StatusCode.CANCELLED
    nothing_in_flight()

    # The connection's full allowance is back.
    gate.set()
    calls = [stub.ModelInfer.future(x_request(float(i), model="hold")) for i in range(2)]
    assert [y_of(call.result(timeout=20)) for call in calls] == [0.0, 1.0]
    nothing_in_flight()


# -- input size -----------------------------------------------------------------------


def capped_request(floats: int, strings: list[bytes] | None = None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="capped")
    request.inputs.add(name="X", datatype="FP32", shape=[floats])
    request.raw_input_contents.append(np.arange(floats, dtype=np.float32).tobytes())
    if strings is not None:
        request.inputs.add(name="S", datatype="BYTES", shape=[len(strings)])
        request.raw_input_contents.append(b"".join(struct.pack("<I", len(s)) + s for s in strings))
    return request


def test_an_input_over_the_models_max_input_bytes_is_refused(
    limited: ServerThread, channels: NewStub
) -> None:
    stub = channels()
    at_limit = stub.ModelInfer(capped_request(LIMIT // 4))
    assert list(at_limit.outputs[0].shape) == [LIMIT // 4]
    error = refusal(lambda: stub.ModelInfer(capped_request(LIMIT // 4 + 1)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        f"model 'capped' input 'X' has a byte size of {LIMIT + 4} bytes, over the model's "
        f"limit of {LIMIT} bytes (parameter batchwire.max_input_bytes)"
    )
    # BYTES count as sent: each element's 4-byte length prefix included.
    stub.ModelInfer(capped_request(1, [b"a" * (LIMIT - 4)]))
    error = refusal(lambda: stub.ModelInfer(capped_request(1, [b"a" * (LIMIT - 3)])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"input 'S' has a byte size of {LIMIT + 1} bytes" in error.details()
    # Models without the parameter take any size.
    big = pb.ModelInferRequest(model_name="fast")
    big.inputs.add(name="X", datatype="FP32", shape=[1, 1])
    big.raw_input_contents.append(np.ones((1, 1), np.float32).tobytes())
    assert y_of(stub.ModelInfer(big)) == 1.0


def test_a_bad_max_input_bytes_keeps_the_model_from_loading(
    limited: ServerThread, channels: NewStub
) -> None:
    stub = channels()
    index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
    for name, (_, problem) in BAD_VALUES.items():
        row = index[name]
        assert row.state == "UNAVAILABLE", row
        assert "parameters['batchwire.max_input_bytes'].string_value" in row.reason
        assert problem in row.reason
        assert not stub.ModelReady(pb.ModelReadyRequest(name=name)).ready
    assert index["capped"].state == "READY"


# -- transport: streams per connection, message size -----------------------------------


@pytest.fixture(scope="module")
def transport(repository: Path, opened: threading.Event) -> Iterator[ServerThread]:
    """A server allowing 2 concurrent streams per connection and 64 KiB messages."""
    server = start_server(repository, grpc_max_concurrent_streams=2, max_message_bytes=2**16)
    try:
        yield server
    finally:
        server.stop()


def test_calls_past_max_concurrent_streams_wait_until_one_closes(
    transport: ServerThread,
) -> None:
    with grpc.insecure_channel(transport.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        first, second = Stream(stub), Stream(stub)
        for i, stream in enumerate((first, second)):
            stream.send(x_request(float(i), model="fast"))
            assert y_of(stream.next().infer_response) == float(i)
        third = Stream(stub)
        third.send(x_request(3.0, model="fast", request_id="third"))
        # A request sent after the third stream's on an open stream is answered; the
        # third stream waits in the client for a free stream. (Its answer must not come:
        # while the cap holds this wait always ends empty; without the cap the answer
        # would come within milliseconds of the second stream's.)
        second.send(x_request(4.0, model="fast"))
        assert y_of(second.next().infer_response) == 4.0
        assert not third.answered.wait(1.0), "a third stream was served on the connection"
        first.close()
        assert first.end() is None
        answer = third.next()
        assert answer.infer_response.id == "third" and y_of(answer.infer_response) == 3.0
        for stream in (second, third):
            stream.close()
            assert stream.end() is None


def test_a_message_over_max_message_size_is_refused_and_the_server_keeps_serving(
    transport: ServerThread,
) -> None:
    oversized = capped_request(2**16 // 4)  # 64 KiB of data plus the message's fields
    with grpc.insecure_channel(transport.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        error = refusal(lambda: stub.ModelInfer(oversized))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"vs. {2**16}" in error.details()  # gRPC names the size and the limit
        stream = Stream(stub)
        stream.send(oversized)
        ended = stream.end()
        assert ended is not None and ended.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The same channel and connection still serve.
        assert y_of(stub.ModelInfer(x_request(8.0, model="fast"))) == 8.0
        stream = Stream(stub)
        stream.send(x_request(9.0, model="fast"))
        assert y_of(stream.next().infer_response) == 9.0
        stream.close()


def test_streams_past_max_open_streams_are_refused_until_one_ends(repository: Path) -> None:
    server = start_server(repository, max_open_streams=2)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            first, second = Stream(stub), Stream(stub)
            for stream, value in ((first, 1.0), (second, 2.0)):
                stream.send(x_request(value, model="fast", request_id=f"s{value}"))
                assert y_of(stream.next().infer_response) == value  # both open and serving
            dataplane = server.server.dataplane
            assert dataplane is not None
            assert dataplane.streams.count == 2
            third = Stream(stub)
            error = third.end()
            assert error is not None
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error.details() == (
                "the server has 2 streams open, its limit (--max-open-streams=2); retry later"
            )
            # The open streams are not cut, and unary calls are not streams.
            second.send(x_request(5.0, model="fast", request_id="again"))
            assert y_of(second.next().infer_response) == 5.0
            assert y_of(stub.ModelInfer(x_request(4.0, model="fast"))) == 4.0
            first.close()
            wait_until(lambda: dataplane.streams.count == 1, "the first stream released")
            fourth = Stream(stub)
            fourth.send(x_request(6.0, model="fast", request_id="fourth"))
            assert y_of(fourth.next().infer_response) == 6.0
            for stream in (second, fourth):
                stream.close()
            wait_until(lambda: dataplane.streams.count == 0, "every stream released")
    finally:
        server.stop()
