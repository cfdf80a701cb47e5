"""System shared memory through a real server and the newest tritonclient.

Regions are made with ``tritonclient.utils.shared_memory`` as a Triton user makes them,
registered with SystemSharedMemoryRegister, and named by request tensors; answers are
compared with the same request sent with its data in the message. Refusals are checked
for their status and the numbers in their message; the server keeps serving after each.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
import tritonclient.utils.shared_memory as shm
from testsupport import ECHO_MODEL_SOURCE, echo_model_config, start_server, write_python_model
from tritonclient.utils import InferenceServerException

from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm (Linux)")

X = np.linspace(-1, 1, 4 * 64, dtype=np.float32).reshape(4, 64)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from batchwire.examples.export import export_examples

    root = tmp_path_factory.mktemp("shm-repo")
    export_examples(root, ["mlp", "text"])
    write_python_model(root, "echo", echo_model_config(), ECHO_MODEL_SOURCE)
    return root


@pytest.fixture(scope="module")
def server(repository: Path):
    server = start_server(repository, allow_client_shm=True)
    yield server
    server.stop()


@pytest.fixture()
def client(server) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.address)
    yield client
    client.unregister_system_shared_memory()
    client.close()


class Regions:
    """Shared-memory regions made for one test, destroyed (unlinked) after it."""

    def __init__(self) -> None:
        self.handles: list = []

    def make(self, byte_size: int, data: np.ndarray | None = None, offset: int = 0):
        name = f"bw-test-{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(name, "/" + name, byte_size)
        self.handles.append(handle)
        if data is not None:
            shm.set_shared_memory_region(handle, [data], offset=offset)
        return name, handle

    def close(self) -> None:
        for handle in self.handles:
            shm.destroy_shared_memory_region(handle)


@pytest.fixture()
def regions() -> Iterator[Regions]:
    made = Regions()
    yield made
    made.close()


def expected_mlp(client: triton.InferenceServerClient) -> np.ndarray:
    inp = triton.InferInput("INPUT__0", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    return client.infer("mlp", [inp]).as_numpy("OUTPUT__0")


def shm_request(in_name: str, out_name: str, out_size: int = 4 * 10 * 4):
    inp = triton.InferInput("INPUT__0", list(X.shape), "FP32")
    inp.set_shared_memory(in_name, X.nbytes)
    out = triton.InferRequestedOutput("OUTPUT__0")
    out.set_shared_memory(out_name, out_size)
    return [inp], [out]


def contents(handle, datatype: str, shape, offset: int = 0) -> np.ndarray:
    """A region's contents as tritonclient reads them (it takes a numpy dtype)."""
    from tritonclient.utils import triton_to_np_dtype

    return shm.get_contents_as_numpy(handle, triton_to_np_dtype(datatype), shape, offset=offset)


def refusal(call, *args, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call(*args, **kwargs)
    return caught.value


# -- inference through regions ---------------------------------------------------------


def test_input_and_output_through_shared_memory_match_the_plain_answer(client, regions):
    in_name, _ = regions.make(X.nbytes, X)
    out_name, out_handle = regions.make(4 * 10 * 4)
    client.register_system_shared_memory(in_name, "/" + in_name, X.nbytes)
    client.register_system_shared_memory(out_name, "/" + out_name, 4 * 10 * 4)
    inputs, outputs = shm_request(in_name, out_name)
    result = client.infer("mlp", inputs, outputs=outputs)
    output = result.get_output("OUTPUT__0")
    assert list(output.shape) == [4, 10] and output.datatype == "FP32"
    # As in Triton: one raw_output_contents entry per output, empty for a shared one.
    assert result.get_response().raw_output_contents == [b""]
    got = contents(out_handle, "FP32", [4, 10])
    np.testing.assert_allclose(got, expected_mlp(client), rtol=1e-6)


def test_region_windows_at_offsets_and_a_plain_output_beside_a_shared_one(client, regions):
    # One object holds both tensors at unaligned offsets inside a registered window.
    base = 100
    total = base + X.nbytes + 7 + 4 * 10 * 4
    name, handle = regions.make(total + 50)
    shm.set_shared_memory_region(handle, [X], offset=base)
    client.register_system_shared_memory(name, "/" + name, total, offset=13)
    inp = triton.InferInput("INPUT__0", list(X.shape), "FP32")
    inp.set_shared_memory(name, X.nbytes, offset=base - 13)
    out = triton.InferRequestedOutput("OUTPUT__0")
    out_at = base - 13 + X.nbytes + 7
    out.set_shared_memory(name, 4 * 10 * 4, offset=out_at)
    result = client.infer("mlp", [inp], outputs=[out])
    got = contents(handle, "FP32", [4, 10], offset=out_at + 13)
    np.testing.assert_allclose(got, expected_mlp(client), rtol=1e-6)
    # The input in the region is untouched (read-only to the model).
    np.testing.assert_array_equal(contents(handle, "FP32", [4, 64], base), X)
    assert result.get_output("OUTPUT__0") is not None


@pytest.mark.parametrize("datatype", ["FP32", "INT8", "UINT64", "BOOL", "FP16", "BYTES"])
def test_every_datatype_round_trips_through_regions_with_a_raw_input_beside(
    client, regions, datatype
):
    # echo returns IN_<type> as OUT_<type>: one input in shared memory, one in the message.
    if datatype == "BYTES":
        data = np.array([[b"a", b"\x00\xffz", b""]], dtype=np.object_)
        from tritonclient.utils import serialize_byte_tensor

        payload = serialize_byte_tensor(data)  # what tritonclient writes into a region
        size = len(payload.item())
    else:
        from tritonclient.utils import triton_to_np_dtype

        data = payload = np.arange(6).reshape(1, 6).astype(triton_to_np_dtype(datatype))
        size = data.nbytes
    in_name, _ = regions.make(size, payload)
    out_name, out_handle = regions.make(size + 16)
    client.register_system_shared_memory(in_name, "/" + in_name, size)
    client.register_system_shared_memory(out_name, "/" + out_name, size + 16)
    shared_in = triton.InferInput(f"IN_{datatype}", list(data.shape), datatype)
    shared_in.set_shared_memory(in_name, size)
    plain = np.array([[1.5, 2.5]], dtype=np.float64)
    plain_in = triton.InferInput("IN_FP64", [1, 2], "FP64")
    plain_in.set_data_from_numpy(plain)
    shared_out = triton.InferRequestedOutput(f"OUT_{datatype}")
    shared_out.set_shared_memory(out_name, size + 16)
    plain_out = triton.InferRequestedOutput("OUT_FP64")
    result = client.infer("echo", [shared_in, plain_in], outputs=[shared_out, plain_out])
    np.testing.assert_array_equal(result.as_numpy("OUT_FP64"), plain)
    output = result.get_output(f"OUT_{datatype}")
    got = contents(out_handle, datatype, list(output.shape))
    if datatype == "BYTES":
        assert [bytes(v) for v in got.reshape(-1)] == [b"a", b"\x00\xffz", b""]
    else:
        np.testing.assert_array_equal(got, data)


def test_shared_memory_on_a_stream(server, client, regions):
    in_name, _ = regions.make(X.nbytes, X)
    client.register_system_shared_memory(in_name, "/" + in_name, X.nbytes)
    outs = []
    for _ in range(5):
        name, handle = regions.make(4 * 10 * 4)
        client.register_system_shared_memory(name, "/" + name, 4 * 10 * 4)
        outs.append((name, handle))
    answers: list = []
    done = asyncio.Event()

    async def run() -> None:
        async with triton_aio.InferenceServerClient(server.address) as aio:

            async def requests():
                for index, (name, _) in enumerate(outs):
                    inputs, outputs = shm_request(in_name, name)
                    yield {
                        "model_name": "mlp",
                        "inputs": inputs,
                        "outputs": outputs,
                        "request_id": str(index),
                    }

            async for result, error in aio.stream_infer(requests()):
                answers.append((result, error))
                if len(answers) == len(outs):
                    done.set()
                    break

    asyncio.run(run())
    assert [e for _, e in answers] == [None] * len(outs)
    expected = expected_mlp(client)
    for result, _ in answers:
        index = int(result.get_response().id)
        got = contents(outs[index][1], "FP32", [4, 10])
        np.testing.assert_allclose(got, expected, rtol=1e-6)


# -- registration ----------------------------------------------------------------------


def test_status_lists_registered_regions_and_unregister_removes_them(client, regions):
    a, _ = regions.make(4096)
    b, _ = regions.make(8192)
    client.register_system_shared_memory(a, "/" + a, 1000, offset=96)
    client.register_system_shared_memory(b, "/" + b, 8192)
    status = client.get_system_shared_memory_status(as_json=True)
    by_name = {r["name"]: r for r in status["regions"].values()}
    assert by_name[a] == {"name": a, "key": "/" + a, "offset": "96", "byte_size": "1000"}
    assert by_name[b]["byte_size"] == "8192"
    one = client.get_system_shared_memory_status(a, as_json=True)
    assert list(one["regions"]) == [a]
    client.unregister_system_shared_memory(a)
    assert a not in client.get_system_shared_memory_status(as_json=True).get("regions", {})
    error = refusal(client.get_system_shared_memory_status, a)
    assert error.status() == "StatusCode.NOT_FOUND"
    assert f"Unable to find system shared memory region: '{a}'" in error.message()
    client.unregister_system_shared_memory(a)  # not registered: OK, as Triton


def test_registration_refusals_name_the_region_and_the_numbers(client, regions):
    name, _ = regions.make(4096)
    client.register_system_shared_memory(name, "/" + name, 4096)
    twice = refusal(client.register_system_shared_memory, name, "/" + name, 4096)
    assert twice.status() == "StatusCode.ALREADY_EXISTS"
    assert f"shared memory region '{name}' already in manager" in twice.message()
    too_big = refusal(client.register_system_shared_memory, "big", "/" + name, 4000, offset=200)
    assert too_big.status() == "StatusCode.INVALID_ARGUMENT"
    assert "offset 200" in too_big.message() and "4096" in too_big.message()
    missing = refusal(client.register_system_shared_memory, "gone", "/bw-no-such-key", 16)
    assert missing.status() == "StatusCode.INTERNAL"
    assert "Unable to open shared memory region: '/bw-no-such-key'" in missing.message()
    escaping = refusal(client.register_system_shared_memory, "esc", "/../etc/passwd", 16)
    assert escaping.status() == "StatusCode.INVALID_ARGUMENT"
    assert "'/../etc/passwd'" in escaping.message()


def test_request_refusals_for_regions(client, regions):
    in_name, _ = regions.make(X.nbytes, X)
    out_name, _ = regions.make(160)
    client.register_system_shared_memory(in_name, "/" + in_name, X.nbytes)
    client.register_system_shared_memory(out_name, "/" + out_name, 160)

    inputs, outputs = shm_request("bw-nowhere", out_name)
    unknown = refusal(client.infer, "mlp", inputs, outputs=outputs)
    assert unknown.status() == "StatusCode.NOT_FOUND"
    assert "Unable to find shared memory region: 'bw-nowhere'" in unknown.message()
    assert "input 'INPUT__0'" in unknown.message()

    inp = triton.InferInput("INPUT__0", [2, 64], "FP32")  # 512 bytes, region has 1024
    inp.set_shared_memory(in_name, X.nbytes)
    wrong_size = refusal(client.infer, "mlp", [inp])
    assert wrong_size.status() == "StatusCode.INVALID_ARGUMENT"
    assert "expected 512 bytes for FP32 shape [2, 64]" in wrong_size.message()
    assert f"shared_memory_byte_size {X.nbytes}" in wrong_size.message()

    inp = triton.InferInput("INPUT__0", list(X.shape), "FP32")
    inp.set_shared_memory(in_name, X.nbytes, offset=8)
    outside = refusal(client.infer, "mlp", [inp])
    assert outside.status() == "StatusCode.INVALID_ARGUMENT"
    assert "Invalid offset + byte size for shared memory region" in outside.message()

    inputs, outputs = shm_request(in_name, out_name, out_size=64)
    small = refusal(client.infer, "mlp", inputs, outputs=outputs)
    assert small.status() == "StatusCode.INTERNAL"
    assert (
        "shared memory size specified with the request for output 'OUTPUT__0' (64 bytes) "
        "should be at least 160 bytes to hold the results"
    ) in small.message()
    # Still serving, and the region still works.
    inputs, outputs = shm_request(in_name, out_name)
    assert client.infer("mlp", inputs, outputs=outputs).get_output("OUTPUT__0") is not None


def test_parameter_combinations_are_refused_as_triton_does(server):
    channel = grpc.insecure_channel(server.address)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)

    def request(**parameters: pb.InferParameter) -> pb.ModelInferRequest:
        message = pb.ModelInferRequest(model_name="mlp")
        tensor = message.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 64])
        for key, value in parameters.items():
            tensor.parameters[key].CopyFrom(value)
        return message

    cases = {
        "can not be specified without parameter 'shared_memory_region'": request(
            shared_memory_byte_size=pb.InferParameter(int64_param=256)
        ),
        "must be specified along with parameter 'shared_memory_region'": request(
            shared_memory_region=pb.InferParameter(string_param="r")
        ),
        "'shared_memory_offset' must be int64_param >= 0 or uint64_param": request(
            shared_memory_region=pb.InferParameter(string_param="r"),
            shared_memory_byte_size=pb.InferParameter(int64_param=256),
            shared_memory_offset=pb.InferParameter(int64_param=-1),
        ),
    }
    try:
        for words, message in cases.items():
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(message, timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert words in caught.value.details()
        # A raw entry for the shared input too: one raw entry per other input, as Triton.
        message = request(
            shared_memory_region=pb.InferParameter(string_param="r"),
            shared_memory_byte_size=pb.InferParameter(int64_param=256),
        )
        message.inputs.add(name="EXTRA", datatype="FP32", shape=[1])
        message.raw_input_contents.append(b"\0" * 4)
        message.raw_input_contents.append(b"\0" * 4)
        message.raw_input_contents.append(b"\0" * 4)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(message, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (
            "entry per input not in shared memory (1; 1 in shared memory), got 3"
            in caught.value.details()
        )
    finally:
        channel.close()


def test_unregister_while_requests_use_the_region_loses_nothing(server, client, regions):
    in_name, _ = regions.make(X.nbytes, X)
    client.register_system_shared_memory(in_name, "/" + in_name, X.nbytes)
    expected = expected_mlp(client)
    outcomes: list[str] = []

    async def run() -> None:
        async with triton_aio.InferenceServerClient(server.address) as aio:

            async def one() -> None:
                inp = triton_aio.InferInput("INPUT__0", list(X.shape), "FP32")
                inp.set_shared_memory(in_name, X.nbytes)
                try:
                    result = await aio.infer("mlp", [inp])
                except InferenceServerException as exc:
                    outcomes.append(exc.status())
                    assert "Unable to find shared memory region" in exc.message()
                else:
                    np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), expected, rtol=1e-6)
                    outcomes.append("OK")

            before = [asyncio.ensure_future(one()) for _ in range(150)]
            await asyncio.sleep(0.005)
            await aio.unregister_system_shared_memory(in_name)  # with requests in flight
            await asyncio.gather(*before)
            await asyncio.gather(*(one() for _ in range(50)))  # all after the unregister

    asyncio.run(run())
    assert len(outcomes) == 200
    assert set(outcomes[:150]) <= {"OK", "StatusCode.NOT_FOUND"}
    assert outcomes[150:] == ["StatusCode.NOT_FOUND"] * 50
    assert client.is_server_live() and client.is_model_ready("mlp")


# -- off, and CUDA ---------------------------------------------------------------------


def test_client_shared_memory_is_off_by_default_as_in_triton(repository, regions):
    server = start_server(repository)
    try:
        client = triton.InferenceServerClient(server.address)
        name, _ = regions.make(X.nbytes, X)
        error = refusal(client.register_system_shared_memory, name, "/" + name, X.nbytes)
        assert error.status() == "StatusCode.UNIMPLEMENTED"
        assert "Start the server with '--allow-client-shm=true' to enable" in error.message()
        inp = triton.InferInput("INPUT__0", list(X.shape), "FP32")
        inp.set_shared_memory(name, X.nbytes)
        error = refusal(client.infer, "mlp", [inp])
        assert error.status() == "StatusCode.UNIMPLEMENTED"
        assert "Client shared memory is disabled" in error.message()
        assert client.get_system_shared_memory_status(as_json=True).get("regions", {}) == {}
        client.close()
    finally:
        server.stop()


def test_cuda_shared_memory_says_this_server_has_no_gpu(client):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the host has a GPU: CUDA shared memory is refused as not implemented")
    error = refusal(client.register_cuda_shared_memory, "cuda0", b"\0" * 64, 0, 1024)
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "failed to register CUDA shared memory region: 'cuda0', GPUs not supported" in (
        error.message()
    )
    assert client.get_cuda_shared_memory_status(as_json=True).get("regions", {}) == {}
    client.unregister_cuda_shared_memory()


# -- perf_analyzer ---------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
def test_perf_analyzer_with_system_shared_memory(perf_analyzer: str, server, streaming: bool):
    import re
    import subprocess

    args = [
        perf_analyzer, "-m", "mlp", "-u", server.address, "-i", "grpc",
        "--shared-memory", "system", "--output-shared-memory-size", "4096",
        "--concurrency-range", "2:2", "--measurement-interval", "800",
        "--max-trials", "6", "--stability-percentage", "999",
    ]  # fmt: skip
    if streaming:
        args.append("--streaming")
    done = subprocess.run(args, capture_output=True, text=True, timeout=180, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    found = re.search(r"Successful request count: (\d+)", output[output.index("Server:") :])
    assert found and int(found.group(1)) > 0, output
    # perf_analyzer unregisters its regions when it ends.
    client = triton.InferenceServerClient(server.address)
    try:
        assert client.get_system_shared_memory_status(as_json=True).get("regions", {}) == {}
    finally:
        client.close()
