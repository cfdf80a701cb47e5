"""Dynamic batching semantics through a real server: gRPC on loopback, real clients.

Every model here is a python-platform model running ``PROBE_SOURCE``: it echoes ``X`` as
``Y`` and reports, per row, what batch that row ran in (``SEQ``: the batch's execution
number, ``SIZE``: its rows, ``ROW``: the row's index in it, ``LEN``: its length axis,
``TAIL``: the row's last element after padding). Every batch it runs is appended to
``<folder>/<model>.log`` (one JSON line), so a test can tell what the model executed.

Holding the instance busy without racing the scheduler: a request whose value is a
*hold token* (>= ``HOLD``) makes ``execute`` create ``started-<token>`` and then wait
until the test creates ``gate-<token>`` (both in the folder named by the config
parameter ``folder``). Queue states are read from the server's own metrics
(``nv_inference_pending_request_count``), so tests wait for observable states, not for
time to pass -- except where the semantic itself is a time (queue timeouts, windows).
"""

from __future__ import annotations

import itertools
import json
import queue
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from testsupport import free_port, start_server, write_python_model

from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc

HOLD = 1_000_000

PROBE_SOURCE = f'''
import json
import os
import threading
import time

import torch

HOLD = {HOLD}
_lock = threading.Lock()
_batches = [0]


class BatchwireModel:
    """Echoes X; reports each row's batch; holds on hold tokens; raises on negatives."""

    def load(self, spec, device, instance_index):
        self.folder = spec.parameters["folder"]
        self.log = os.path.join(self.folder, spec.name + ".log")
        self.instance = instance_index

    def _hold(self, token):
        open(os.path.join(self.folder, f"started-{{token}}"), "w").close()
        gate = os.path.join(self.folder, f"gate-{{token}}")
        give_up = time.monotonic() + 10.0
        while not os.path.exists(gate) and time.monotonic() < give_up:
            time.sleep(0.002)

    def execute(self, inputs):
        x = inputs["X"]
        rows, length = x.shape[0], x.shape[1]
        firsts = [int(v) for v in x[:, 0]]
        with _lock:
            _batches[0] += 1
            seq = _batches[0]
            line = {{"seq": seq, "instance": self.instance, "values": firsts, "length": length}}
            with open(self.log, "a") as log:
                log.write(json.dumps(line) + "\\n")
        if any(v < 0 for v in firsts):
            raise ValueError("poisoned")
        for v in firsts:
            if v >= HOLD:
                self._hold(v)

        def column(value):
            return torch.full((rows, 1), value, dtype=torch.int64)

        return {{
            "Y": x.clone(),
            "SEQ": column(seq),
            "SIZE": column(rows),
            "LEN": column(length),
            "ROW": torch.arange(rows, dtype=torch.int64).reshape(rows, 1),
            "TAIL": x[:, -1:].clone(),
        }}
'''

NO_BATCH_CONFIG = """
name: "nobatch"
backend: "python"
max_batch_size: 0
input { name: "X" data_type: TYPE_INT64 dims: [ 2, 3 ] }
output { name: "Y" data_type: TYPE_INT64 dims: [ 2, 3 ] }
output { name: "SHAPE" data_type: TYPE_INT64 dims: [ 2 ] }
"""

NO_BATCH_SOURCE = """
import torch


class BatchwireModel:
    def execute(self, inputs):
        x = inputs["X"]
        return {"Y": x * 2, "SHAPE": torch.tensor(list(x.shape), dtype=torch.int64)}
"""


def probe_config(
    name: str,
    folder: Path,
    *,
    batching: str = "dynamic_batching { }",
    max_batch_size: int = 8,
    dims: str = "[ 1 ]",
    ragged: bool = False,
    instances: int = 1,
    parameters: dict[str, str] | None = None,
) -> str:
    outputs = "\n".join(
        f'output {{ name: "{out}" data_type: TYPE_INT64 dims: [ 1 ] }}'
        for out in ("SEQ", "SIZE", "LEN", "ROW", "TAIL")
    )
    params = {"folder": str(folder), **(parameters or {})}
    params_text = "\n".join(
        f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}'
        for key, value in params.items()
    )
    return f"""
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input {{ name: "X" data_type: TYPE_INT64 dims: {dims} allow_ragged_batch: {str(ragged).lower()} }}
output {{ name: "Y" data_type: TYPE_INT64 dims: {dims} }}
{outputs}
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
{batching}
{params_text}
"""


def probe_models(folder: Path) -> dict[str, dict]:
    """Model name -> probe_config keyword arguments, one model per semantic under test."""
    fixed_window = {"batchwire.adaptive_delay": "false"}
    return {
        "items": {},
        "preferred": {
            "batching": "dynamic_batching { preferred_batch_size: [ 4 ] "
            "max_queue_delay_microseconds: 5000000 }",
            "parameters": fixed_window,
        },
        "lowload": {"batching": "dynamic_batching { max_queue_delay_microseconds: 2000000 }"},
        "priority": {
            "max_batch_size": 1,
            "batching": "dynamic_batching { priority_levels: 2 default_priority_level: 2 }",
        },
        "queuefull": {
            "batching": "dynamic_batching { default_queue_policy { max_queue_size: 2 } }"
        },
        "qreject": {
            "batching": "dynamic_batching { default_queue_policy { timeout_action: REJECT "
            "default_timeout_microseconds: 200000 allow_timeout_override: true } }"
        },
        "qdelay": {
            "max_batch_size": 1,
            "batching": "dynamic_batching { default_queue_policy { timeout_action: DELAY "
            "default_timeout_microseconds: 1000 allow_timeout_override: true } }",
        },
        "ordered": {"instances": 2, "batching": "dynamic_batching { preserve_ordering: true }"},
        "deadline": {},
        "cancel": {},
        "mixed": {
            "dims": "[ -1 ]",
            "batching": "dynamic_batching { preferred_batch_size: [ 3 ] "
            "max_queue_delay_microseconds: 3000000 }",
            "parameters": fixed_window,
        },
        "ragged": {
            "dims": "[ -1 ]",
            "ragged": True,
            "parameters": {"batchwire.ragged_pad_value": "-7"},
        },
        "poison": {},
        "poison_whole": {"parameters": {"batchwire.retry_by_halves": "false"}},
    }


# -- client side ------------------------------------------------------------------------

_values = itertools.count(1)
_tokens = itertools.count(HOLD)


def fresh(rows: int = 1) -> list[int]:
    """Values no other request of this module uses (one per row)."""
    return [next(_values) for _ in range(rows)]


def make_request(
    model: str,
    data: list[int] | list[list[int]],
    *,
    priority: int = 0,
    timeout_us: int = 0,
    request_id: str = "",
) -> pb.ModelInferRequest:
    """A request for input X; a flat list is one value per row (shape [rows, 1])."""
    array = np.asarray(data, dtype=np.int64)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="X", datatype="INT64", shape=array.shape)
    request.raw_input_contents.append(array.tobytes())
    if priority:
        request.parameters["priority"].int64_param = priority
    if timeout_us:
        request.parameters["timeout"].int64_param = timeout_us
    return request


def decode(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    return {
        out.name: np.frombuffer(raw, np.int64).reshape(tuple(out.shape))
        for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def wait_for(condition: Callable[[], object], what: str, timeout: float = 10.0) -> object:
    """Poll ``condition`` until it is truthy; fail naming ``what`` after ``timeout`` s."""
    give_up = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


class Harness:
    """The stub, the metrics endpoint and the model folder of the module's server."""

    def __init__(self, stub: pb_grpc.GRPCInferenceServiceStub, metrics_url: str, folder: Path):
        self.stub = stub
        self.metrics_url = metrics_url
        self.folder = folder

    def send(self, model: str, data, *, timeout: float | None = None, **kwargs) -> grpc.Future:
        return self.stub.ModelInfer.future(make_request(model, data, **kwargs), timeout=timeout)

    def infer(self, model: str, data, **kwargs) -> dict[str, np.ndarray]:
        return decode(self.stub.ModelInfer(make_request(model, data, **kwargs), timeout=10))

    def pending(self, model: str) -> int:
        """Requests queued (not yet in a batch) for ``model``, from the server's metrics."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as reply:
            text = reply.read().decode()
        pattern = rf'^nv_inference_pending_request_count\{{model="{model}",version="1"\}} (\S+)$'
        found = re.search(pattern, text, re.MULTILINE)
        return int(float(found.group(1))) if found else 0

    def wait_pending(self, model: str, expected: int | Callable[[int], bool]) -> None:
        check = expected if callable(expected) else (lambda n: n == expected)
        wait_for(lambda: check(self.pending(model)), f"'{model}' queue depth {expected}")

    def executed(self, model: str) -> list[dict]:
        """Every batch the model ran so far (complete log lines only)."""
        path = self.folder / f"{model}.log"
        if not path.exists():
            return []
        return [
            json.loads(line)
            for line in path.read_text().splitlines(keepends=True)
            if line.endswith("\n")
        ]

    def executed_values(self, model: str) -> set[int]:
        return {value for batch in self.executed(model) for value in batch["values"]}

    def stats(self, model: str) -> pb.ModelStatistics:
        response = self.stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=10)
        return response.model_stats[0]

    def wait_started(self, token: int, call: grpc.Future | None = None) -> None:
        started = self.folder / f"started-{token}"

        def ready() -> bool:
            if call is not None and call.done():
                call.result()  # raises the hold request's own error, if it failed
            return started.exists()

        wait_for(ready, f"the hold request {token} to reach the model")

    def release(self, token: int) -> None:
        (self.folder / f"gate-{token}").touch()

    @contextmanager
    def held(self, model: str) -> Iterator[grpc.Future]:
        """Keep the model's (only) instance busy with a hold request until the block ends."""
        token = next(_tokens)
        call = self.send(model, [token])
        try:
            self.wait_started(token, call)
            yield call
        finally:
            self.release(token)


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Iterator[Harness]:
    root: Path = tmp_path_factory.mktemp("batching-repo")
    folder: Path = tmp_path_factory.mktemp("batching-gates")
    for name, options in probe_models(folder).items():
        write_python_model(root, name, probe_config(name, folder, **options), PROBE_SOURCE)
    write_python_model(root, "nobatch", NO_BATCH_CONFIG, NO_BATCH_SOURCE)
    server = start_server(root, metrics_port=free_port())
    try:
        with grpc.insecure_channel(server.address) as channel:
            yield Harness(pb_grpc.GRPCInferenceServiceStub(channel), server.metrics_url, folder)
    finally:
        server.stop()


def rpc_error(call: grpc.Future, timeout: float = 10.0) -> grpc.RpcError:
    error = call.exception(timeout=timeout)
    assert isinstance(error, grpc.RpcError), f"expected the request to fail, got {call.result()}"
    return error


def seq_of(result: dict[str, np.ndarray]) -> int:
    """The batch a (single-batch) request ran in."""
    seqs = set(result["SEQ"][:, 0].tolist())
    assert len(seqs) == 1, f"the request's rows ran in several batches: {seqs}"
    return seqs.pop()


# -- tests ------------------------------------------------------------------------------


def test_items_are_counted_and_requests_never_split(harness: Harness) -> None:
    model = "items"
    sent = [fresh(3), fresh(3), fresh(3)]
    with harness.held(model) as gate:
        calls = [harness.send(model, sent[0])]
        harness.wait_pending(model, 1)
        calls.append(harness.send(model, sent[1]))
        harness.wait_pending(model, 2)
        calls.append(harness.send(model, sent[2]))
        # 9 items queued > max_batch_size 8: the first two may be staged as a full batch.
        harness.wait_pending(model, lambda n: n != 2)
    assert decode(gate.result(timeout=10))["SIZE"][0, 0] == 1
    results = [decode(call.result(timeout=10)) for call in calls]
    rows_per_batch: dict[int, int] = {}
    size_of: dict[int, int] = {}
    for data, result in zip(sent, results, strict=True):
        assert result["Y"][:, 0].tolist() == data
        seq = seq_of(result)
        rows = result["ROW"][:, 0].tolist()
        assert rows == list(range(rows[0], rows[0] + 3)), f"rows not contiguous: {rows}"
        size = int(result["SIZE"][0, 0])
        assert size <= 8
        size_of[seq] = size
        rows_per_batch[seq] = rows_per_batch.get(seq, 0) + 3
    assert rows_per_batch == size_of  # every row of each batch is accounted for
    assert sorted(size_of.values()) == [3, 6]  # two requests batched (6 items), 9 never
    stats = harness.stats(model)
    assert stats.inference_count == 10 and stats.execution_count == 3
    assert sorted(b.batch_size for b in stats.batch_stats) == [1, 3, 6]

    with pytest.raises(grpc.RpcError) as err:
        harness.infer(model, fresh(9))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch size 9 exceeds max_batch_size 8" in err.value.details()


def test_max_batch_size_zero_passes_shapes_unchanged(harness: Harness) -> None:
    data = np.arange(6, dtype=np.int64).reshape(2, 3)
    request = pb.ModelInferRequest(model_name="nobatch")
    request.inputs.add(name="X", datatype="INT64", shape=[2, 3])
    request.raw_input_contents.append(data.tobytes())
    result = decode(harness.stub.ModelInfer(request, timeout=10))
    assert result["SHAPE"].tolist() == [2, 3]  # the model saw no batch dimension
    np.testing.assert_array_equal(result["Y"], data * 2)

    meta = harness.stub.ModelMetadata(pb.ModelMetadataRequest(name="nobatch"), timeout=10)
    assert [list(t.shape) for t in meta.inputs] == [[2, 3]]
    assert [list(t.shape) for t in meta.outputs] == [[2, 3], [2]]
    batched = harness.stub.ModelMetadata(pb.ModelMetadataRequest(name="items"), timeout=10)
    assert [list(t.shape) for t in batched.inputs] == [[-1, 1]]

    with_batch = pb.ModelInferRequest(model_name="nobatch")
    with_batch.inputs.add(name="X", datatype="INT64", shape=[1, 2, 3])
    with_batch.raw_input_contents.append(data.tobytes())
    with pytest.raises(grpc.RpcError) as err:
        harness.stub.ModelInfer(with_batch, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_preferred_batch_size_dispatches_without_waiting_for_the_window(harness) -> None:
    # Fixed 5 s window (adaptive off): only reaching preferred_batch_size 4 dispatches early.
    model = "preferred"
    sent = [fresh() for _ in range(4)]
    start = time.monotonic()
    calls = [harness.send(model, data) for data in sent]
    results = [decode(call.result(timeout=10)) for call in calls]
    elapsed = time.monotonic() - start
    assert elapsed < 2.0, f"4 requests took {elapsed:.2f} s: preferred size 4 was not honoured"
    assert len({seq_of(r) for r in results}) == 1
    assert all(int(r["SIZE"][0, 0]) == 4 for r in results)
    assert [r["Y"][0, 0] for r in results] == [data[0] for data in sent]


def test_low_load_has_no_fixed_delay(harness: Harness) -> None:
    # max_queue_delay 2 s, adaptive: a request alone never waits for the window.
    for _ in range(3):
        data = fresh()
        start = time.monotonic()
        result = harness.infer("lowload", data)
        elapsed = time.monotonic() - start
        assert elapsed < 1.0, f"a lone request took {elapsed:.2f} s (a fixed delay?)"
        assert result["Y"][:, 0].tolist() == data


def test_a_stream_that_waits_for_each_answer_has_no_fixed_delay(harness: Harness) -> None:
    # The same 2 s adaptive window over one stream, one request at a time: the caller
    # never pipelines, so each request is alone and runs at once.
    outgoing: queue.Queue = queue.Queue()

    def requests() -> Iterator[pb.ModelInferRequest]:
        while (item := outgoing.get()) is not None:
            yield item

    stream = harness.stub.ModelStreamInfer(requests(), timeout=20)
    try:
        for i in range(4):
            data = fresh()
            start = time.monotonic()
            outgoing.put(make_request("lowload", data, request_id=f"s{i}"))
            response = next(stream)
            elapsed = time.monotonic() - start
            assert response.error_message == ""
            assert elapsed < 1.0, f"stream request {i} took {elapsed:.2f} s (held?)"
            assert decode(response.infer_response)["Y"][:, 0].tolist() == data
    finally:
        outgoing.put(None)
    assert list(stream) == []


def test_priority_levels(harness: Harness) -> None:
    model = "priority"  # max_batch_size 1: one request per batch, so SEQ orders them
    with harness.held(model) as gate:
        low = harness.send(model, fresh(), priority=2)
        harness.wait_pending(model, 1)
        default = harness.send(model, fresh())  # default_priority_level 2
        harness.wait_pending(model, 2)
        high = harness.send(model, fresh(), priority=1)
        harness.wait_pending(model, 3)
    order = [seq_of(decode(call.result(timeout=10))) for call in (gate, high, low, default)]
    assert order == sorted(order), f"execution order gate, high, low, default: {order}"

    with pytest.raises(grpc.RpcError) as err:
        harness.infer(model, fresh(), priority=3)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1..2" in err.value.details()


def test_max_queue_size_rejects_and_loses_nothing(harness: Harness) -> None:
    model = "queuefull"
    sent = [fresh(), fresh()]
    with harness.held(model) as gate:
        queued = [harness.send(model, sent[0])]
        harness.wait_pending(model, 1)
        queued.append(harness.send(model, sent[1]))
        harness.wait_pending(model, 2)
        with pytest.raises(grpc.RpcError) as err:
            harness.infer(model, fresh())
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "is full" in err.value.details()
        assert "max_queue_size 2" in err.value.details()
    gate.result(timeout=10)
    for data, call in zip(sent, queued, strict=True):
        assert decode(call.result(timeout=10))["Y"][:, 0].tolist() == data
    assert harness.stats(model).inference_count == 3


def test_queue_timeout_reject_with_override(harness: Harness) -> None:
    # default_timeout 200 ms, REJECT, allow_timeout_override.
    model = "qreject"
    patient_data, impatient_data = fresh(), fresh()
    with harness.held(model) as gate:
        patient = harness.send(model, patient_data, timeout_us=30_000_000)
        harness.wait_pending(model, 1)
        impatient = harness.send(model, impatient_data)
        error = rpc_error(impatient)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "timed out" in error.details() and "200000 us" in error.details()
        # The older request would have expired first without its 30 s override.
        assert harness.pending(model) == 1
        assert not patient.done()
    gate.result(timeout=10)
    assert decode(patient.result(timeout=10))["Y"][:, 0].tolist() == patient_data
    assert impatient_data[0] not in harness.executed_values(model)


def test_queue_timeout_delay_runs_late_requests_last(harness: Harness) -> None:
    # default_timeout 1 ms, DELAY, allow_timeout_override; max_batch_size 1.
    model = "qdelay"
    with harness.held(model) as gate:
        late = harness.send(model, fresh())
        harness.wait_pending(model, 1)
        # No event marks the move to the delayed queue: give the 1 ms timeout 200x that.
        time.sleep(0.2)
        on_time = harness.send(model, fresh(), timeout_us=30_000_000)
        harness.wait_pending(model, 2)
    gate.result(timeout=10)
    late_seq = seq_of(decode(late.result(timeout=10)))  # expired, still served
    on_time_seq = seq_of(decode(on_time.result(timeout=10)))
    assert on_time_seq < late_seq


def test_preserve_ordering_across_instances(harness: Harness) -> None:
    model = "ordered"  # two instances, preserve_ordering
    outgoing: queue.Queue = queue.Queue()
    answers: list[tuple[str, str]] = []

    def requests() -> Iterator[pb.ModelInferRequest]:
        while (item := outgoing.get()) is not None:
            yield item

    stream = harness.stub.ModelStreamInfer(requests(), timeout=20)

    def read() -> None:
        for response in stream:
            answers.append((response.infer_response.id, response.error_message))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    token = next(_tokens)
    second = fresh()
    try:
        outgoing.put(make_request(model, [token], request_id="first"))
        harness.wait_started(token)
        outgoing.put(make_request(model, second, request_id="second"))
        wait_for(lambda: second[0] in harness.executed_values(model), "the second to run")
        # Its batch is back in the scheduler once the statistics count it...
        wait_for(lambda: harness.stats(model).execution_count == 1, "the second's batch")
        time.sleep(0.2)  # ...and its answer must still be held back behind the first.
        assert answers == []
    finally:
        harness.release(token)
        outgoing.put(None)
    reader.join(timeout=10)
    assert answers == [("first", ""), ("second", "")]
    instances = {b["values"][0]: b["instance"] for b in harness.executed(model)}
    assert instances[token] != instances[second[0]]


def test_grpc_deadline_expires_queued_request(harness: Harness) -> None:
    model = "deadline"
    doomed = fresh()
    with harness.held(model) as gate:
        call = harness.send(model, doomed, timeout=0.3)
        assert rpc_error(call).code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(
            lambda: harness.stats(model).inference_stats.fail.count == 1,
            "the server to give up on the request",
        )
        assert harness.pending(model) == 0
    gate.result(timeout=10)
    after = fresh()
    assert harness.infer(model, after)["Y"][:, 0].tolist() == after
    assert doomed[0] not in harness.executed_values(model)
    assert harness.stats(model).inference_count == 2  # the hold request and `after`


def test_cancelled_request_never_runs(harness: Harness) -> None:
    model = "cancel"
    doomed = fresh()
    with harness.held(model) as gate:
        call = harness.send(model, doomed)
        harness.wait_pending(model, 1)
        assert call.cancel()
        wait_for(
            lambda: harness.stats(model).inference_stats.fail.count == 1,
            "the server to withdraw the request",
        )
        assert harness.pending(model) == 0
    gate.result(timeout=10)
    assert call.cancelled()
    after = fresh()
    assert harness.infer(model, after)["Y"][:, 0].tolist() == after
    assert doomed[0] not in harness.executed_values(model)
    assert harness.stats(model).inference_count == 2


def test_mixed_shapes_never_batch_together_nor_stall_each_other(harness: Harness) -> None:
    # dims [-1] (not ragged), fixed 3 s window, preferred_batch_size 3 (items).
    model = "mixed"
    a, c = [fresh(3)], [fresh(3)]  # length 3, one row each
    b, d = [fresh(5)], [fresh(5), fresh(5)]  # length 5: one row, then two rows
    start = time.monotonic()
    calls = {"a": harness.send(model, a)}
    harness.wait_pending(model, 1)
    calls["c"] = harness.send(model, c)
    harness.wait_pending(model, 2)
    # A length-5 request arrives: the length-3 batch must go now, not when its window ends.
    calls["b"] = harness.send(model, b)
    calls["d"] = harness.send(model, d)  # 1 + 2 rows: preferred size 3 reached
    results = {name: decode(call.result(timeout=10)) for name, call in calls.items()}
    elapsed = time.monotonic() - start
    assert elapsed < 1.5, f"took {elapsed:.2f} s: one shape waited out the 3 s window"
    for name, data in (("a", a), ("c", c), ("b", b), ("d", d)):
        assert results[name]["Y"].tolist() == data
    assert seq_of(results["a"]) == seq_of(results["c"]) != seq_of(results["b"])
    assert seq_of(results["b"]) == seq_of(results["d"])
    assert results["a"]["LEN"][0, 0] == 3 and results["a"]["SIZE"][0, 0] == 2
    assert results["b"]["LEN"][0, 0] == 5 and results["b"]["SIZE"][0, 0] == 3


def test_ragged_batch_pads_and_slices_back(harness: Harness) -> None:
    model = "ragged"  # X allow_ragged_batch, batchwire.ragged_pad_value -7
    short, long = [fresh(2)], [fresh(5)]
    with harness.held(model) as gate:
        calls = [harness.send(model, short)]
        harness.wait_pending(model, 1)
        calls.append(harness.send(model, long))
        harness.wait_pending(model, 2)
    gate.result(timeout=10)
    got_short, got_long = (decode(call.result(timeout=10)) for call in calls)
    assert got_short["Y"].tolist() == short  # sliced back to its own length
    assert got_long["Y"].tolist() == long
    assert seq_of(got_short) == seq_of(got_long)
    assert got_short["SIZE"][0, 0] == 2 and got_short["LEN"][0, 0] == 5
    assert got_short["TAIL"][0, 0] == -7  # the padding the model saw
    assert got_long["TAIL"][0, 0] == long[0][-1]


@pytest.mark.parametrize(("model", "halves"), [("poison", True), ("poison_whole", False)])
def test_failure_isolation(harness: Harness, model: str, halves: bool) -> None:
    good1, good2 = fresh(), fresh()
    with harness.held(model) as gate:
        calls = [harness.send(model, good1)]
        harness.wait_pending(model, 1)
        calls.append(harness.send(model, [-good1[0]]))
        harness.wait_pending(model, 2)
        calls.append(harness.send(model, good2))
        harness.wait_pending(model, 3)
    gate.result(timeout=10)
    first, poisoned, second = calls
    error = rpc_error(poisoned)
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "ValueError: poisoned" in error.details()
    together = harness.executed(model)[1]["values"]  # the batch after the hold request
    assert together == [good1[0], -good1[0], good2[0]]
    if halves:
        assert decode(first.result(timeout=10))["Y"][:, 0].tolist() == good1
        assert decode(second.result(timeout=10))["Y"][:, 0].tolist() == good2
    else:
        for call in (first, second):
            error = rpc_error(call)
            assert error.code() == grpc.StatusCode.INTERNAL
            assert "poisoned" in error.details()


def test_server_survives_all_of_it(harness: Harness) -> None:
    assert harness.stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    data = fresh(2)
    result = harness.infer("lowload", data)
    assert result["Y"][:, 0].tolist() == data
    assert int(result["SIZE"][0, 0]) == 2
