"""Property-based tests of request decoding: any message gives a request or a defined error.

In process, :data:`GRPC_CODEC` ``.decode`` and ``validate_request`` get a few hundred
messages drawn by :func:`hostile_requests.infer_requests` for three model specs; every
outcome must be either a request that holds exactly what the message said or an
InferenceError with INVALID_ARGUMENT (malformed) or UNIMPLEMENTED (a well-formed
request for sequences, shared memory or classification, which batchwire lacks). Any
other exception, an INTERNAL among them, fails the test. Well-formed tensors of every
datatype round-trip, raw and typed. End to end, a live server on the echo model
answers a few hundred drawn requests, unary and on one stream, with OK,
INVALID_ARGUMENT, NOT_FOUND (an unknown model) or UNIMPLEMENTED only, and still serves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from hostile_requests import infer_requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from testsupport import (
    ALL_DATATYPES,
    ECHO_MODEL_SOURCE,
    echo_model_config,
    start_server,
    write_python_model,
)

from batchwire.core.datatypes import NUMPY_DTYPES, WIRE_DTYPES, serialize_bytes
from batchwire.core.errors import InferenceError, StatusCode
from batchwire.core.spec import ModelSpec, TensorSpec
from batchwire.core.types import InferenceRequest
from batchwire.core.validation import validate_request
from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc
from batchwire.protos.contents import CONTENTS_FIELDS
from batchwire.server.codec import GRPC_CODEC, MAX_ID_LENGTH

#: The echo model's spec: IN_<type> -> OUT_<type>, dims [-1], every input optional.
ECHO = ModelSpec(
    "echo",
    "1",
    "python",
    8,
    tuple(TensorSpec(f"IN_{dt}", dt, (-1,), optional=True) for dt in ALL_DATATYPES),
    tuple(TensorSpec(f"OUT_{dt}", dt, (-1,)) for dt in ALL_DATATYPES),
)
#: Unbatched, fixed dims, one required input.
FLAT = ModelSpec(
    "echo",
    "1",
    "python",
    0,
    (TensorSpec("IN_FP32", "FP32", (2, 2)), TensorSpec("IN_BYTES", "BYTES", (2,), optional=True)),
    (TensorSpec("OUT_FP32", "FP32", (2, 2)),),
)
#: The echo model with a 16-byte input limit.
LIMITED = ModelSpec("echo", "1", "python", 8, ECHO.inputs, ECHO.outputs, max_input_bytes=16)
SPECS = st.sampled_from([ECHO, FLAT, LIMITED])

#: What a drawn request may be refused with (see the module docstring).
REFUSALS = {StatusCode.INVALID_ARGUMENT, StatusCode.UNIMPLEMENTED}
PROPERTY_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def decode(
    request: pb.ModelInferRequest, spec: ModelSpec
) -> tuple[InferenceRequest, dict[str, str]]:
    """Both steps the pipeline takes before queuing: decode, then validate."""
    decoded, datatypes = GRPC_CODEC.decode(request, spec, None)
    validate_request(spec, decoded, datatypes)
    return decoded, datatypes


@PROPERTY_SETTINGS
@given(request=infer_requests(), spec=SPECS)
def test_any_request_decodes_or_is_refused_with_a_defined_status(
    request: pb.ModelInferRequest, spec: ModelSpec
) -> None:
    try:
        decoded, datatypes = decode(request, spec)
    except InferenceError as exc:
        assert exc.code in REFUSALS, f"{exc.code}: {exc.message}"
        assert exc.message.startswith("model 'echo'"), exc.message
        if exc.code is StatusCode.UNIMPLEMENTED:
            assert "not supported" in exc.message
        return
    # Accepted: the request holds exactly what the message declared.
    assert len(decoded.id) <= MAX_ID_LENGTH
    assert decoded.id == request.id
    assert set(decoded.inputs) == {tensor.name for tensor in request.inputs}
    for tensor in request.inputs:
        array = decoded.inputs[tensor.name]
        assert array.shape == tuple(tensor.shape)
        assert array.dtype == NUMPY_DTYPES[tensor.datatype]
        assert datatypes[tensor.name] == tensor.datatype
    assert decoded.requested_outputs == tuple(out.name for out in request.outputs)
    assert len(set(decoded.requested_outputs)) == len(decoded.requested_outputs)
    assert decoded.priority >= 0
    assert decoded.timeout_us is None or decoded.timeout_us >= 0


@st.composite
def echo_tensors(draw: st.DrawFn) -> tuple[str, np.ndarray]:
    """A datatype and a [batch, n] array of it that the echo model takes."""
    datatype = draw(st.sampled_from(ALL_DATATYPES))
    shape = (draw(st.integers(1, 8)), draw(st.integers(0, 4)))
    if datatype == "BYTES":
        items = draw(st.lists(st.binary(max_size=5), min_size=shape[0] * shape[1]))
        array = np.empty(len(items), dtype=np.object_)
        array[:] = items
        return datatype, array[: shape[0] * shape[1]].reshape(shape)
    return datatype, draw(arrays(NUMPY_DTYPES[datatype], shape))


def same_data(got: np.ndarray, sent: np.ndarray) -> bool:
    if sent.dtype == np.object_:
        return got.shape == sent.shape and list(got.flat) == list(sent.flat)
    # Bitwise, so that NaNs compare equal to themselves.
    return got.shape == sent.shape and got.tobytes() == sent.astype(got.dtype).tobytes()


@PROPERTY_SETTINGS
@given(tensor=echo_tensors(), typed=st.booleans())
def test_well_formed_tensors_round_trip(tensor: tuple[str, np.ndarray], typed: bool) -> None:
    datatype, array = tensor
    request = pb.ModelInferRequest(model_name="echo")
    message = request.inputs.add(name=f"IN_{datatype}", datatype=datatype, shape=array.shape)
    field = CONTENTS_FIELDS.get(datatype)
    if typed and field is not None:
        getattr(message.contents, field).extend(array.ravel().tolist())
    elif datatype == "BYTES":
        request.raw_input_contents.append(serialize_bytes(array))
    else:
        request.raw_input_contents.append(array.astype(WIRE_DTYPES[datatype]).tobytes())
    decoded, _ = decode(request, ECHO)
    assert same_data(decoded.inputs[f"IN_{datatype}"], array)


def test_a_batching_model_needs_at_least_one_input() -> None:
    # Found by the property above: every echo input is optional, and a request with
    # none reached the model with no batch dimension (StopIteration, INTERNAL).
    with pytest.raises(InferenceError) as err:
        decode(pb.ModelInferRequest(model_name="echo"), ECHO)
    assert err.value.code is StatusCode.INVALID_ARGUMENT
    assert err.value.message.startswith(
        "model 'echo': the request has no inputs, expected at least one of IN_BOOL, IN_UINT8"
    )
    # An unbatched model whose inputs are all optional may be sent none.
    flat = ModelSpec("flat", "1", "python", 0, FLAT.inputs[1:], FLAT.outputs)
    decoded, _ = decode(pb.ModelInferRequest(model_name="flat"), flat)
    assert decoded.inputs == {}


# -- end to end ---------------------------------------------------------------------------

ANSWERS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNIMPLEMENTED,
}


@pytest.fixture(scope="module")
def echo_stub(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    root: Path = tmp_path_factory.mktemp("echo-repo")
    write_python_model(root, "echo", echo_model_config(), ECHO_MODEL_SOURCE)
    server = start_server(root)
    try:
        with grpc.insecure_channel(server.address) as channel:
            yield pb_grpc.GRPCInferenceServiceStub(channel)
    finally:
        server.stop()


def echo_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="echo", id="plain")
    request.inputs.add(name="IN_INT32", datatype="INT32", shape=[2, 3])
    request.raw_input_contents.append(np.arange(6, dtype="<i4").tobytes())
    request.outputs.add(name="OUT_INT32")
    return request


def test_a_live_server_answers_every_drawn_request_and_still_serves(
    echo_stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    outcomes: Counter[grpc.StatusCode] = Counter()
    sent: list[pb.ModelInferRequest] = []

    # Derandomized: the same few hundred requests on every run, so that the counts
    # below hold every time (the in-process properties explore further).
    @settings(PROPERTY_SETTINGS, derandomize=True, database=None)
    @given(request=infer_requests(model_names=("echo", "echo", "echo", "nope")))
    def send(request: pb.ModelInferRequest) -> None:
        sent.append(request)
        try:
            echo_stub.ModelInfer(request, timeout=30)
        except grpc.RpcError as err:
            assert err.code() in ANSWERS, f"{err.code()}: {err.details()}"
            outcomes[err.code()] += 1
        else:
            outcomes[grpc.StatusCode.OK] += 1

    send()
    assert sum(outcomes.values()) == len(sent) >= 100
    # The generator reaches both sides of the checks and an unknown model.
    assert outcomes[grpc.StatusCode.OK] > 0, outcomes
    assert outcomes[grpc.StatusCode.INVALID_ARGUMENT] > 0, outcomes
    assert outcomes[grpc.StatusCode.NOT_FOUND] > 0, outcomes

    # The same requests on one stream: one answer each, and the stream ends cleanly.
    answers = list(echo_stub.ModelStreamInfer(iter(sent), timeout=60))
    assert len(answers) == len(sent)
    assert any(a.error_message for a in answers)
    assert any(not a.error_message for a in answers)

    response = echo_stub.ModelInfer(echo_request(), timeout=30)
    assert response.id == "plain"
    assert np.frombuffer(response.raw_output_contents[0], "<i4").tolist() == list(range(6))
