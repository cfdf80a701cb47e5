"""ModelInfer and ModelStreamInfer on the example models, through our stubs and tritonclient."""

from __future__ import annotations

import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from batchwire.examples.reference import reference_outputs
from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc

RNG = np.random.default_rng(7)


def example_inputs(name: str, batch: int = 2) -> dict[str, np.ndarray]:
    if name in ("mlp", "null"):
        return {"INPUT__0": RNG.standard_normal((batch, 64), dtype=np.float32)}
    if name == "cnn":
        return {"INPUT__0": RNG.standard_normal((batch, 3, 64, 64), dtype=np.float32)}
    return {"TOKENS": RNG.integers(1, 1000, size=(batch, 9), dtype=np.int64)}


@pytest.fixture(scope="module")
def stub(server_address: str):
    with grpc.insecure_channel(server_address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def tclient(server_address: str):
    client = triton.InferenceServerClient(server_address)
    yield client
    client.close()


def raw_request(model: str, inputs: dict[str, np.ndarray], **fields) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **fields)
    for name, array in inputs.items():
        datatype = {"float32": "FP32", "int64": "INT64"}[str(array.dtype)]
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    return request


def decode(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    dtypes = {"FP32": np.float32, "INT64": np.int64}
    return {
        out.name: np.frombuffer(raw, dtype=dtypes[out.datatype]).reshape(tuple(out.shape))
        for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


@pytest.mark.parametrize("model", ["mlp", "cnn", "text", "null"])
def test_our_stubs_get_the_reference_outputs(stub, model: str) -> None:
    inputs = example_inputs(model)
    response = stub.ModelInfer(raw_request(model, inputs, id="req-42"))
    assert response.model_name == model and response.model_version == "1"
    assert response.id == "req-42"
    outputs = decode(response)
    expected = reference_outputs(model, inputs)
    assert list(outputs) == list(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(outputs[name], value, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", ["mlp", "cnn", "text", "null"])
def test_tritonclient_gets_the_reference_outputs(tclient, model: str) -> None:
    inputs = example_inputs(model, batch=3)
    infer_inputs = []
    for name, array in inputs.items():
        tensor = triton.InferInput(
            name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT64"
        )
        tensor.set_data_from_numpy(array)
        infer_inputs.append(tensor)
    result = tclient.infer(model, infer_inputs, request_id="abc")
    assert result.get_response().id == "abc"
    for name, value in reference_outputs(model, inputs).items():
        np.testing.assert_allclose(result.as_numpy(name), value, rtol=1e-5, atol=1e-5)


def test_requested_output_subset_and_order(stub) -> None:
    inputs = example_inputs("text")
    request = raw_request("text", inputs)
    request.outputs.add(name="TOKEN_NORMS")
    response = stub.ModelInfer(request)
    assert [o.name for o in response.outputs] == ["TOKEN_NORMS"]
    assert len(response.raw_output_contents) == 1
    np.testing.assert_allclose(
        decode(response)["TOKEN_NORMS"],
        reference_outputs("text", inputs)["TOKEN_NORMS"],
        rtol=1e-5,
        atol=1e-5,
    )
    both = raw_request("text", inputs)
    both.outputs.add(name="TOKEN_NORMS")
    both.outputs.add(name="EMBEDDING")
    assert [o.name for o in stub.ModelInfer(both).outputs] == ["TOKEN_NORMS", "EMBEDDING"]


def test_typed_contents_are_accepted(stub) -> None:
    x = RNG.standard_normal((1, 64), dtype=np.float32)
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 64])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    out = decode(stub.ModelInfer(request))["OUTPUT__0"]
    np.testing.assert_allclose(
        out, reference_outputs("mlp", {"INPUT__0": x})["OUTPUT__0"], rtol=1e-5, atol=1e-5
    )


def test_stream_infer_with_tritonclient(tclient) -> None:
    results: queue.Queue = queue.Queue()
    tclient.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        sent = {}
        for i in range(6):
            x = RNG.standard_normal((1, 64), dtype=np.float32)
            tensor = triton.InferInput("INPUT__0", [1, 64], "FP32")
            tensor.set_data_from_numpy(x)
            tclient.async_stream_infer("mlp", [tensor], request_id=str(i))
            sent[str(i)] = x
        bad = triton.InferInput("INPUT__0", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
        tclient.async_stream_infer("mlp", [bad], request_id="bad")
        got, errors = {}, []
        for _ in range(7):
            result, error = results.get(timeout=30)
            if error is not None:
                errors.append(str(error))
            else:
                got[result.get_response().id] = result.as_numpy("OUTPUT__0")
    finally:
        tclient.stop_stream()
    assert set(got) == set(sent)
    for rid, x in sent.items():
        np.testing.assert_allclose(
            got[rid], reference_outputs("mlp", {"INPUT__0": x})["OUTPUT__0"], rtol=1e-5, atol=1e-5
        )
    assert len(errors) == 1 and "expected shape [-1,64], got [1,3]" in errors[0]


def test_large_message_is_accepted(stub) -> None:
    # 32 x 3 x 64 x 64 FP32 = 1.5 MiB; plus a 48 MiB request to pass gRPC's 4 MiB default.
    big = RNG.standard_normal((32, 3, 64, 64), dtype=np.float32)
    response = stub.ModelInfer(raw_request("cnn", {"INPUT__0": big}))
    assert list(response.outputs[0].shape) == [32, 10]
    huge = pb.ModelInferRequest(model_name="mlp")
    huge.inputs.add(name="INPUT__0", datatype="FP32", shape=[64])
    huge.raw_input_contents.append(b"\0" * (48 * 2**20))
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(huge)
    # Received whole (not RESOURCE_EXHAUSTED by a 4 MiB limit) and rejected for its size.
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
