"""InferenceClient against the local echo server over a real loopback gRPC connection."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from client_samples import sample
from testsupport import ALL_DATATYPES

from batchwire.clients import InferenceClient, InferenceServerError, InferInput, bf16_to_float32
from batchwire.core.datatypes import NUMPY_DTYPES, v2_of_numpy


@pytest.fixture
def client(echo_address: str):
    with InferenceClient(echo_address, timeout=10) as client:
        yield client


def assert_same(actual: np.ndarray, expected: np.ndarray, datatype: str) -> None:
    assert actual.shape == expected.shape
    if datatype == "BYTES":
        assert actual.tolist() == expected.tolist()
    else:
        assert actual.dtype == NUMPY_DTYPES[datatype]
        np.testing.assert_array_equal(actual, expected)


def test_server_endpoints(client: InferenceClient) -> None:
    assert client.server_live() is True
    assert client.server_ready() is True
    assert client.model_ready("echo") is True
    metadata = client.server_metadata()
    assert (metadata.name, list(metadata.extensions)) == ("echo-server", ["echo"])
    model = client.model_metadata("fixed")
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("X", "FP32", [2, -1])]
    config = client.model_config("echo")
    assert config.max_batch_size == 8
    assert len(config.input) == len(ALL_DATATYPES)
    assert sorted(m.name for m in client.repository_index()) == ["echo", "fixed"]
    assert client.health() == "SERVING"
    assert client.health("inference.GRPCInferenceService") == "SERVING"


def test_errors_carry_status_code_and_details(client: InferenceClient) -> None:
    with pytest.raises(InferenceServerError) as info:
        client.health("nope")
    assert info.value.status_code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(InferenceServerError) as info:
        client.model_metadata("missing")
    assert info.value.status_code == grpc.StatusCode.NOT_FOUND
    assert "'missing' is not found" in info.value.details
    with pytest.raises(InferenceServerError) as info:
        client.infer("missing", {"x": np.zeros(1)})
    assert info.value.status_code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(InferenceServerError) as info:
        client.infer("echo", {"x": np.zeros(1)}, parameters={"fail": "bad shape [3]"})
    assert info.value.status_code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.message == "bad shape [3]"
    assert str(info.value) == "[INVALID_ARGUMENT] bad shape [3]"
    with pytest.raises(InferenceServerError) as info:
        client.model_statistics("echo")
    assert info.value.status_code == grpc.StatusCode.UNIMPLEMENTED
    assert isinstance(info.value.__cause__, grpc.RpcError)


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
def test_round_trip_every_datatype(client: InferenceClient, typed: bool) -> None:
    inputs = [
        InferInput(f"in_{dt}", sample(dt, shape, seed), dt)
        for seed, dt in enumerate(ALL_DATATYPES)
        for shape in [(2, 3)]
    ]
    inputs.append(InferInput("scalar", sample("FP32", ())))
    inputs.append(InferInput("empty", sample("INT8", (0, 5))))
    result = client.infer("echo", inputs, parameters={"typed": typed})
    assert list(result.outputs) == [item.name for item in inputs]
    for item in inputs:
        datatype = item.datatype or v2_of_numpy(item.data.dtype)
        assert result.datatypes[item.name] == datatype
        assert_same(result.as_numpy(item.name), item.data, datatype)


def test_infer_request_fields(client: InferenceClient) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = client.infer(
        "echo",
        {"x": x, "y": np.array(["hello", "w\u00f6rld"])},
        outputs=["y"],
        version="1",
        request_id="req-42",
        priority=2,
        timeout_us=5000,
        parameters={"custom": "v"},
        datatypes={"x": "FP16"},
        headers={"X-Request-Tag": "abc"},
    )
    assert (result.id, result.model_name, result.model_version) == ("req-42", "echo", "1")
    assert list(result.outputs) == ["y"]
    assert result.as_numpy("y").tolist() == [b"hello", "w\u00f6rld".encode()]
    assert result.parameters["priority"] == 2
    assert result.parameters["timeout"] == 5000
    assert result.parameters["custom"] == "v"
    assert result.parameters["x-request-tag"] == "abc"
    # The proto parameters are int64, as Triton expects.
    params = result.response.parameters
    assert params["priority"].WhichOneof("parameter_choice") == "int64_param"
    assert params["timeout"].WhichOneof("parameter_choice") == "int64_param"
    fp16 = client.infer("echo", {"x": x}, datatypes={"x": "FP16"})
    assert fp16.datatypes["x"] == "FP16"
    np.testing.assert_array_equal(fp16.as_numpy("x"), x.astype(np.float16))


def test_bf16_inputs_from_floats(client: InferenceClient) -> None:
    x = np.array([[1.0, -0.5, 3.0]], np.float32)
    result = client.infer("echo", {"x": x}, datatypes={"x": "BF16"})
    assert result.datatypes["x"] == "BF16"
    np.testing.assert_array_equal(bf16_to_float32(result.as_numpy("x")), x)


def test_large_tensor_beyond_grpc_default_limit(client: InferenceClient) -> None:
    big = np.random.default_rng(0).standard_normal((4, 1024, 1024)).astype(np.float32)  # 16 MiB
    result = client.infer("echo", {"big": big})
    np.testing.assert_array_equal(result.as_numpy("big"), big)
    assert not result.as_numpy("big").flags.writeable


def test_deadline(client: InferenceClient) -> None:
    start = time.monotonic()
    with pytest.raises(InferenceServerError) as info:
        client.infer("echo", {"x": np.zeros(1)}, parameters={"sleep_s": 5.0}, deadline=0.2)
    assert info.value.status_code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 3
    with InferenceClient(client.address, timeout=0.2) as short:
        with pytest.raises(InferenceServerError) as info:
            short.infer("echo", {"x": np.zeros(1)}, parameters={"sleep_s": 5.0})
        assert info.value.status_code == grpc.StatusCode.DEADLINE_EXCEEDED
        # A per-call deadline overrides the client's default.
        assert short.infer("echo", {"x": np.zeros(1)}, parameters={"sleep_s": 0.3}, deadline=5)


def test_unreachable_server_is_unavailable() -> None:
    with (
        InferenceClient("grpc://127.0.0.1:1", timeout=5) as client,
        pytest.raises(InferenceServerError) as info,
    ):
        client.server_live()
    assert info.value.status_code == grpc.StatusCode.UNAVAILABLE


def test_concurrent_calls_from_threads(client: InferenceClient) -> None:
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(10):
                x = np.full((3,), seed * 100 + i, np.int64)
                out = client.infer("echo", {"x": x}, request_id=f"{seed}-{i}")
                assert out.id == f"{seed}-{i}"
                np.testing.assert_array_equal(out.as_numpy("x"), x)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors


def test_stream_infer(client: InferenceClient) -> None:
    requests = ({"x": np.full((1, 2), i, np.float32)} for i in range(5))
    results = list(client.stream_infer("echo", requests, priority=1, headers={"x-s": "1"}))
    assert [r.id for r in results] == ["0", "1", "2", "3", "4"]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result.as_numpy("x"), np.full((1, 2), i, np.float32))
        assert result.parameters["priority"] == 1
        assert result.parameters["x-s"] == "1"
    assert list(client.stream_infer("echo", [])) == []


def test_stream_error_entries(client: InferenceClient) -> None:
    items = [{"x": np.zeros(1)}, {"x": np.ones(1)}]
    stream = client.stream_infer("missing", items)
    with pytest.raises(InferenceServerError) as info:
        next(stream)
    assert info.value.status_code == grpc.StatusCode.UNKNOWN
    assert "'missing' is not found" in info.value.message
    assert info.value.request_id == "0"
    results = list(client.stream_infer("missing", items, raise_on_error=False))
    assert [type(r) for r in results] == [InferenceServerError, InferenceServerError]
    assert [r.request_id for r in results] == ["0", "1"]


def test_stream_bad_input_raises_the_encoding_error(client: InferenceClient) -> None:
    items = [{"x": np.zeros(1)}, {"x": np.array([1.5])}]
    with pytest.raises(ValueError, match="cannot send a float64 array as INT64"):
        list(client.stream_infer("echo", items, datatypes={"x": "INT64"}))
    # The client is still usable afterwards.
    assert client.server_live()


def test_stream_deadline_and_early_close(client: InferenceClient) -> None:
    slow = ({"x": np.zeros(1)} for _ in range(3))
    with pytest.raises(InferenceServerError) as info:
        list(client.stream_infer("echo", slow, parameters={"sleep_s": 5.0}, deadline=0.3))
    assert info.value.status_code == grpc.StatusCode.DEADLINE_EXCEEDED

    def endless():
        i = 0
        while True:
            yield {"x": np.array([i])}
            i += 1

    stream = client.stream_infer("echo", endless())
    first = [next(stream) for _ in range(3)]
    assert [r.id for r in first] == ["0", "1", "2"]
    stream.close()  # cancels the call
    assert client.server_ready()
