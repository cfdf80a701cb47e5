"""A repository of python-platform models: every datatype, model errors, a broken model."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from testsupport import (
    ALL_DATATYPES,
    ECHO_MODEL_SOURCE,
    FAILING_MODEL_CONFIG,
    FAILING_MODEL_SOURCE,
    echo_model_config,
    start_server,
    write_python_model,
)

from batchwire.core.datatypes import deserialize_bytes, serialize_bytes
from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc

RNG = np.random.default_rng(3)


def sample(datatype: str, n: int = 5) -> np.ndarray:
    """A [1, n] array of ``datatype`` in its storage dtype (BF16 as uint16 bit patterns)."""
    if datatype == "BOOL":
        return RNG.integers(0, 2, (1, n)).astype(bool)
    if datatype == "BYTES":
        return np.array([[f"tok{i}".encode() * (i + 1) for i in range(n)]], dtype=np.object_)
    if datatype == "BF16":
        import torch

        return torch.randn(1, n).to(torch.bfloat16).view(torch.uint16).numpy()
    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(datatype)
    if dtype is not None:
        return RNG.standard_normal((1, n)).astype(dtype)
    info = np.iinfo(np.dtype(datatype.lower()))
    return RNG.integers(info.min, info.max, (1, n), dtype=np.dtype(datatype.lower()), endpoint=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root: Path = tmp_path_factory.mktemp("pyrepo")
    write_python_model(root, "echo", echo_model_config(), ECHO_MODEL_SOURCE)
    write_python_model(root, "failing", FAILING_MODEL_CONFIG, FAILING_MODEL_SOURCE)
    broken = root / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text('name: "broken"\nmax_batch_size: 4\ninput { name: "X" ')
    (broken / "1" / "model.py").write_text("")
    srv = start_server(root, model_control_mode="explicit", load_models=("*",))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def test_every_datatype_round_trips_through_our_stubs(stub) -> None:
    request = pb.ModelInferRequest(model_name="echo")
    arrays = {dt: sample(dt) for dt in ALL_DATATYPES}
    for dt, array in arrays.items():
        request.inputs.add(name=f"IN_{dt}", datatype=dt, shape=array.shape)
        request.raw_input_contents.append(
            serialize_bytes(array) if dt == "BYTES" else array.tobytes()
        )
    response = stub.ModelInfer(request)
    got = {}
    for out, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        dt = out.datatype
        if dt == "BYTES":
            got[dt] = deserialize_bytes(raw, int(np.prod(out.shape))).reshape(tuple(out.shape))
        else:
            storage = (
                np.uint16
                if dt == "BF16"
                else np.dtype("bool" if dt == "BOOL" else dt.lower().replace("fp", "float"))
            )
            got[dt] = np.frombuffer(raw, dtype=storage).reshape(tuple(out.shape))
        assert out.name == f"OUT_{dt}"
    assert set(got) == set(ALL_DATATYPES)
    for dt, array in arrays.items():
        np.testing.assert_array_equal(got[dt], array, err_msg=dt)


def test_every_datatype_round_trips_through_tritonclient(server) -> None:
    client = triton.InferenceServerClient(server.address)
    try:
        inputs, arrays = [], {}
        for dt in ALL_DATATYPES:
            if dt == "BF16":
                continue  # tritonclient's numpy helpers have no bfloat16; covered by our stubs above
            array = sample(dt)
            arrays[dt] = array
            tensor = triton.InferInput(f"IN_{dt}", list(array.shape), dt)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [triton.InferRequestedOutput(f"OUT_{dt}") for dt in arrays]
        result = client.infer("echo", inputs, outputs=outputs)
        for dt, array in arrays.items():
            np.testing.assert_array_equal(result.as_numpy(f"OUT_{dt}"), array, err_msg=dt)
    finally:
        client.close()


def test_typed_contents_for_every_datatype_that_has_them(stub) -> None:
    field = {
        "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
        "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
        "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
    }  # fmt: skip
    request = pb.ModelInferRequest(model_name="echo")
    arrays = {dt: sample(dt) for dt in field}
    for dt, array in arrays.items():
        tensor = request.inputs.add(name=f"IN_{dt}", datatype=dt, shape=array.shape)
        getattr(tensor.contents, field[dt]).extend(array.ravel().tolist())
        request.outputs.add(name=f"OUT_{dt}")
    response = stub.ModelInfer(request)
    assert [o.name for o in response.outputs] == [f"OUT_{dt}" for dt in field]
    for out, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        dt = out.name[4:]
        if dt == "BYTES":
            got = deserialize_bytes(raw, int(np.prod(out.shape))).reshape(tuple(out.shape))
        else:
            got = np.frombuffer(raw, dtype=arrays[dt].dtype).reshape(tuple(out.shape))
        np.testing.assert_array_equal(got, arrays[dt], err_msg=dt)
    fp16 = pb.ModelInferRequest(model_name="echo")
    fp16.inputs.add(name="IN_FP16", datatype="FP16", shape=[1, 1]).contents.fp32_contents.append(
        1.0
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(fp16)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "FP16 data must be sent in raw_input_contents" in err.value.details()


def test_malformed_bytes_tensor(stub) -> None:
    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name="IN_BYTES", datatype="BYTES", shape=[1, 2])
    request.raw_input_contents.append(b"\x05\x00\x00\x00abc")
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'IN_BYTES'" in err.value.details() and "declares 5 bytes" in err.value.details()


def test_model_exception_is_internal_and_server_survives(stub) -> None:
    bad = pb.ModelInferRequest(model_name="failing")
    bad.inputs.add(name="X", datatype="FP32", shape=[1, 1])
    bad.raw_input_contents.append(np.array([[-1.0]], np.float32).tobytes())
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(bad)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "negative input is not allowed" in err.value.details()
    good = pb.ModelInferRequest(model_name="failing")
    good.inputs.add(name="X", datatype="FP32", shape=[1, 1])
    good.raw_input_contents.append(np.array([[2.0]], np.float32).tobytes())
    response = stub.ModelInfer(good)
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [4.0]


def test_broken_model_does_not_stop_the_others(server, stub) -> None:
    client = triton.InferenceServerClient(server.address)
    try:
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index["broken"].state == "UNAVAILABLE"
        assert "broken/config.pbtxt" in index["broken"].reason
        assert index["echo"].state == "READY" and index["failing"].state == "READY"
        assert not client.is_model_ready("broken")
        assert not client.is_server_ready()  # not every model is ready
    finally:
        client.close()
    request = pb.ModelInferRequest(model_name="broken")
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "config.pbtxt" in err.value.details()


def test_unload_and_load_through_tritonclient(server) -> None:
    client = triton.InferenceServerClient(server.address)
    try:
        client.unload_model("failing")
        assert not client.is_model_ready("failing")
        states = {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}
        assert states["failing"] == ("UNAVAILABLE", "unloaded")
        with pytest.raises(triton.InferenceServerException) as err:
            client.unload_model("nope")
        assert "nope" in str(err.value)
        client.load_model("failing")
        assert client.is_model_ready("failing")
    finally:
        client.close()
