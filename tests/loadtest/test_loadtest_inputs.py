"""Requests for any model, built from its metadata and config: no server needed.

Covers random data in every datatype, shapes with and without batching,
``--shape`` overrides and refusals, ``--batch-size``, ``--input-data`` files
(.npz and perf_analyzer's JSON) and each kind of bad file, the choice between
an example's hand-made workload and a generated one, and the pool files the
Locust processes read.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from testsupport import ALL_DATATYPES

from batchwire.clients.tensors import bf16_to_float32, decode_tensor
from batchwire.core.datatypes import NUMPY_DTYPES, serialize_bytes
from batchwire.loadtest.inputs import (
    BYTES_LENGTH,
    INT_RANGE,
    InputSpecError,
    ModelInputs,
    TensorSpec,
    load_input_data,
    parse_shape,
    parse_shapes,
    random_tensor,
    request_shapes,
    resolve_shape,
)
from batchwire.loadtest.runner import LoadTestOptions, UsageError, plan
from batchwire.loadtest.workloads import (
    MAX_REQUEST_BYTES,
    POOL_BYTES,
    POOL_SIZE,
    WORKLOADS,
    WorkloadOptions,
    encode_request,
    parse_input_data_options,
    read_workloads,
    workload_for,
    write_workloads,
)
from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import model_config_pb2 as mc

RNG = np.random.default_rng(7)


def model(
    *inputs: tuple[str, str, tuple[int, ...]], max_batch_size: int = 8, name: str = "m"
) -> ModelInputs:
    return ModelInputs(name, max_batch_size, tuple(TensorSpec(*spec) for spec in inputs))


SCALER = model(("X", "FP32", (4,)), name="scaler")
#: A batching model with a variable dim, an INT32 and a BYTES input.
MIXED = model(("IDS", "INT32", (-1,)), ("TAGS", "BYTES", (2,)), ("W", "FP32", (3, -1)))
UNBATCHED = model(("X", "FP32", (2, 2)), max_batch_size=0, name="flat")


def message(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, text  # every refusal is one line
    return text


# Metadata and config ---------------------------------------------------------------


def test_inputs_from_metadata_and_config() -> None:
    metadata = pb.ModelMetadataResponse(name="m", platform="python")
    metadata.inputs.add(name="IDS", datatype="INT32", shape=[-1, -1])
    metadata.inputs.add(name="MASK", datatype="BOOL", shape=[-1, 5])
    config = mc.ModelConfig(name="m", max_batch_size=16)
    config.input.add(name="IDS", data_type=mc.TYPE_INT32, dims=[-1])
    config.input.add(name="MASK", data_type=mc.TYPE_BOOL, dims=[5], optional=True)
    inputs = ModelInputs.from_protos(metadata, config)
    assert inputs.batched and inputs.max_batch_size == 16
    assert inputs.inputs == (
        TensorSpec("IDS", "INT32", (-1,)),
        TensorSpec("MASK", "BOOL", (5,), optional=True),
    )
    # No config (a KServe-only server): the metadata shapes as they are, unbatched.
    bare = ModelInputs.from_protos(metadata)
    assert not bare.batched and bare.inputs[1].dims == (-1, 5)


def test_an_unknown_datatype_in_the_metadata_is_named() -> None:
    metadata = pb.ModelMetadataResponse(name="m")
    metadata.inputs.add(name="X", datatype="FP8", shape=[2])
    with pytest.raises(InputSpecError) as caught:
        ModelInputs.from_protos(metadata)
    assert "model 'm' input 'X' has datatype 'FP8', which is not a KServe v2 datatype" in message(
        caught
    )


# Random data, every datatype -----------------------------------------------------------


@pytest.mark.parametrize("datatype", ALL_DATATYPES)
def test_random_data_in_every_datatype_survives_the_wire(datatype: str) -> None:
    array = random_tensor(datatype, (3, 5), RNG)
    assert array.shape == (3, 5)
    assert array.dtype == NUMPY_DTYPES[datatype]
    if datatype == "BYTES":
        assert all(isinstance(item, bytes) and len(item) == BYTES_LENGTH for item in array.flat)
        assert all(item.isalnum() for item in array.flat)
    elif datatype == "BOOL":
        assert set(array.flat) <= {True, False}
    elif datatype == "BF16":
        floats = bf16_to_float32(array)
        assert np.isfinite(floats).all() and floats.std() > 0.1
    elif array.dtype.kind == "f":
        assert np.isfinite(array).all() and array.std() > 0.1
    else:
        assert INT_RANGE[0] <= array.min() and array.max() < INT_RANGE[1]
    request = encode_request("m", {"IN": array}, {"IN": datatype})
    assert request.inputs[0].datatype == datatype and list(request.inputs[0].shape) == [3, 5]
    decoded = decode_tensor(datatype, [3, 5], request.raw_input_contents[0])
    assert decoded.tolist() == array.tolist()


# Shapes, --shape, --batch-size ----------------------------------------------------------


def test_shapes_with_and_without_batching() -> None:
    assert request_shapes(SCALER) == {"X": (1, 4)}
    assert request_shapes(SCALER, batch_size=8) == {"X": (8, 4)}
    assert request_shapes(UNBATCHED) == {"X": (2, 2)}
    assert request_shapes(UNBATCHED, batch_size=1) == {"X": (2, 2)}
    shapes = request_shapes(MIXED, {"IDS": (16,), "W": (3, 7)}, batch_size=2)
    assert shapes == {"IDS": (2, 16), "TAGS": (2, 2), "W": (2, 3, 7)}


def test_batch_size_limits() -> None:
    with pytest.raises(InputSpecError) as caught:
        request_shapes(UNBATCHED, batch_size=4)
    assert message(caught) == (
        "model 'flat' does not batch (max_batch_size 0): --batch-size must be 1, got 4"
    )
    with pytest.raises(InputSpecError) as caught:
        request_shapes(SCALER, batch_size=9)
    assert message(caught) == "--batch-size 9 is over model 'scaler''s max_batch_size 8"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("IMAGE:3,224,224", ("IMAGE", (3, 224, 224))),
        (" IDS : 16 ", ("IDS", (16,))),
        ("ns:input:4", ("ns:input", (4,))),
        ("SCALAR:", ("SCALAR", ())),
    ],
)
def test_shape_option_spelling(text: str, parsed: tuple[str, tuple[int, ...]]) -> None:
    name, dims = parse_shape(text)
    assert (name.strip(), dims) == parsed


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("IMAGE", "expected NAME:d1,d2,..."),
        (":3,4", "expected NAME:d1,d2,..."),
        ("IMAGE:3,x", "dims must be whole numbers >= 0, got 'x'"),
        ("IMAGE:3,-1", "dims must be whole numbers >= 0, got '-1'"),
    ],
)
def test_bad_shape_options(text: str, problem: str) -> None:
    with pytest.raises(InputSpecError) as caught:
        parse_shape(text)
    assert problem in message(caught) and repr(text) in message(caught)


def test_a_shape_given_twice_is_refused() -> None:
    with pytest.raises(InputSpecError) as caught:
        parse_shapes(["IDS:4", "IDS:8"])
    assert message(caught) == "--shape IDS is given twice ([4] and [8])"


def test_variable_dims_need_a_shape() -> None:
    with pytest.raises(InputSpecError) as caught:
        request_shapes(MIXED, {"IDS": (16,)})
    assert message(caught) == (
        "model 'm' input 'W' has variable dims [3, -1]: give its shape with --shape W:3,N "
        "(N: the size to send)"
    )


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        (
            (3,),
            "--shape W:3 has 1 dims, model 'm' input 'W' has dims [3, -1] (2)",
        ),
        (
            (2, 3, 7),
            "--shape W:2,3,7 has 3 dims, model 'm' input 'W' has dims [3, -1] (2); leave out "
            "the batch dimension (the model batches up to 8: use --batch-size)",
        ),
        (
            (4, 7),
            "--shape W:4,7 does not fit model 'm' input 'W', dims [3, -1]: dim 0 is fixed at 3, "
            "got 4",
        ),
    ],
)
def test_shapes_that_do_not_fit_are_refused(override: tuple[int, ...], problem: str) -> None:
    with pytest.raises(InputSpecError) as caught:
        resolve_shape(MIXED, MIXED.inputs[2], override)
    assert message(caught) == problem


def test_a_fixed_shape_may_be_repeated() -> None:
    assert resolve_shape(SCALER, SCALER.inputs[0], (4,)) == (4,)


def test_shape_tensors_are_not_made_up() -> None:
    shaped = ModelInputs("s", 0, (TensorSpec("SIZES", "INT32", (2,), shape_tensor=True),))
    with pytest.raises(InputSpecError, match="'SIZES' is a shape tensor"):
        request_shapes(shaped)


# Which workload --------------------------------------------------------------------


def test_examples_keep_their_hand_made_workloads() -> None:
    mlp = model(("INPUT__0", "FP32", (64,)), max_batch_size=64, name="mlp")
    assert workload_for(mlp) is WORKLOADS["mlp"]
    text = model(("TOKENS", "INT64", (-1,)), max_batch_size=32, name="text")
    assert workload_for(text) is WORKLOADS["text"]
    fixed = workload_for(text, WorkloadOptions(batch_size=8))
    assert fixed.source == "example" and fixed.description.startswith("INT64 TOKENS [8, 4..64]")
    assert {request.inputs[0].shape[0] for request in fixed.build_pool(size=8)} == {8}


def test_an_example_name_with_other_inputs_gets_generated_requests() -> None:
    # A user's own "mlp": the hand-made requests would not fit it.
    mlp = model(("INPUT__0", "FP32", (10,)), max_batch_size=4, name="mlp")
    workload = workload_for(mlp)
    assert workload.source == "random" and workload.description == "FP32 INPUT__0 [1, 10], random"
    # So does an example given a --shape.
    text = model(("TOKENS", "INT64", (-1,)), max_batch_size=32, name="text")
    workload = workload_for(text, WorkloadOptions(shapes={"TOKENS": (12,)}, batch_size=2))
    assert workload.source == "random"
    assert [list(r.inputs[0].shape) for r in workload.build_pool(size=3)] == [[2, 12]] * 3


def test_generated_pools() -> None:
    workload = workload_for(MIXED, WorkloadOptions(shapes={"IDS": (5,), "W": (3, 2)}))
    assert workload.description == "INT32 IDS [1, 5], BYTES TAGS [1, 2], FP32 W [1, 3, 2], random"
    pool = workload.build_pool(seed=1)
    assert len(pool) == POOL_SIZE
    assert [t.datatype for t in pool[0].inputs] == ["INT32", "BYTES", "FP32"]
    assert pool[0].raw_input_contents != pool[1].raw_input_contents  # random, not repeated
    # Large inputs: the pool stops at POOL_BYTES instead of holding 64 copies.
    big = model(("IMAGE", "FP32", (3, 512, 512)), name="big")  # 3 MiB a request
    pool = workload_for(big).build_pool()
    assert 1 < len(pool) < POOL_SIZE
    assert sum(r.ByteSize() for r in pool) < POOL_BYTES + pool[0].ByteSize()


def test_a_request_over_the_size_limit_is_refused() -> None:
    huge = model(("IMAGE", "FP32", (-1, 1024, 1024)), name="huge")
    workload = workload_for(huge, WorkloadOptions(shapes={"IMAGE": (17, 1024, 1024)}))
    with pytest.raises(InputSpecError) as caught:
        workload.build_pool()
    assert message(caught).startswith(
        "one request to model 'huge' (IMAGE [1, 17, 1024, 1024]) is 68.0 MiB, over the 64 MiB"
    )
    assert MAX_REQUEST_BYTES == 64 * 2**20


def test_pools_round_trip_through_the_workloads_file(tmp_path: Path) -> None:
    workloads = {
        "scaler": workload_for(SCALER),
        "m": workload_for(MIXED, WorkloadOptions(shapes={"IDS": (5,), "W": (3, 2)})),
    }
    pools = {name: w.build_pool(size=5) for name, w in workloads.items()}
    path = write_workloads(tmp_path, workloads, pools)
    index = json.loads(path.read_text())
    assert index["models"]["scaler"]["description"] == "FP32 X [1, 4], random"
    assert read_workloads(path) == pools
    (tmp_path / index["models"]["m"]["requests"]).write_bytes(b"\x09\x00\x00\x00abc")
    with pytest.raises(ValueError, match=r"cannot read the requests of model 'm'.*truncated"):
        read_workloads(path)
    other = tmp_path / "other.json"
    other.write_text('{"version": 2, "models": {}}')
    with pytest.raises(ValueError, match=r"other\.json: not a workloads file of format 1"):
        read_workloads(other)
    with pytest.raises(ValueError, match=r"cannot read the workloads file .*0\.bin"):
        read_workloads(tmp_path / "requests" / "0.bin")


# --input-data: .npz -----------------------------------------------------------------


def npz(tmp_path: Path, name: str = "in.npz", **arrays: np.ndarray) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_npz_input_data(tmp_path: Path) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    data = load_input_data(npz(tmp_path, X=x))
    assert data.kind == "npz"
    [request] = data.requests(SCALER)
    np.testing.assert_array_equal(request["X"], x)
    workload = workload_for(SCALER, WorkloadOptions(input_data={None: data}))
    assert workload.source == "data" and workload.description == "1 request(s) from in.npz"
    [encoded] = workload.build_pool()
    assert list(encoded.inputs[0].shape) == [2, 4]
    assert decode_tensor("FP32", [2, 4], encoded.raw_input_contents[0]).tolist() == x.tolist()


def test_npz_with_every_kind_of_input(tmp_path: Path) -> None:
    ids = np.array([[1, 2, 3]], dtype=np.int32)
    tags = np.array([[b"a", b"bc"]])  # bytes (S) array: no pickle needed
    w = np.ones((1, 3, 5), dtype=np.float32)
    [request] = load_input_data(npz(tmp_path, IDS=ids, TAGS=tags, W=w)).requests(MIXED)
    assert request["TAGS"].dtype == object and request["TAGS"].tolist() == [[b"a", b"bc"]]
    words = np.array([["é", "x"]])  # str (U) arrays are sent as UTF-8
    [request] = load_input_data(npz(tmp_path, IDS=ids, TAGS=words, W=w)).requests(MIXED)
    assert request["TAGS"].tolist() == [["é".encode(), b"x"]]
    half = model(("H", "BF16", (2,)))
    [request] = load_input_data(npz(tmp_path, H=np.array([[1.0, -2.5]]))).requests(half)
    assert bf16_to_float32(request["H"]).tolist() == [[1.0, -2.5]]


@pytest.mark.parametrize(
    ("arrays", "problem"),
    [
        (
            {"Y": np.zeros((1, 4), np.float32)},
            "array 'Y' is not an input of model 'scaler' (inputs: X)",
        ),
        ({}, None),  # an empty archive: see below
        (
            {"X": np.zeros((1, 4), np.float64)},
            "input 'X' is FP32, expected a float32 array, got float64",
        ),
        (
            {"X": np.zeros((4,), np.float32)},
            "input 'X' of model 'scaler' needs shape [B, 4] with B from 1 to 8 (the model "
            "batches), got [4]",
        ),
        (
            {"X": np.zeros((2, 5), np.float32)},
            "input 'X' of model 'scaler' needs shape [B, 4] with B from 1 to 8 (the model "
            "batches), got [2, 5]",
        ),
        (
            {"X": np.zeros((9, 4), np.float32)},
            "input 'X' of model 'scaler' needs shape [B, 4] with B from 1 to 8 (the model "
            "batches), got [9, 4]",
        ),
    ],
)
def test_bad_npz_files_are_named(
    tmp_path: Path, arrays: dict[str, np.ndarray], problem: str | None
) -> None:
    if problem is None:
        with pytest.raises(InputSpecError) as caught:
            load_input_data(npz(tmp_path, "empty.npz"))
        assert message(caught).endswith("empty.npz: the archive holds no arrays")
        return
    path = npz(tmp_path, **arrays)
    with pytest.raises(InputSpecError) as caught:
        load_input_data(path).requests(SCALER)
    assert message(caught) == f"--input-data {path}: {problem}"


def test_npz_missing_input_and_other_mismatches(tmp_path: Path) -> None:
    ids = np.array([[1, 2, 3]], dtype=np.int32)
    path = npz(tmp_path, IDS=ids)
    with pytest.raises(InputSpecError) as caught:
        load_input_data(path).requests(MIXED)
    assert message(caught) == (
        f"--input-data {path}: missing input 'TAGS' (BYTES [2]) of model 'm'; the file has IDS"
    )
    tags, w = np.array([[b"a", b"b"]]), np.ones((2, 3, 1), np.float32)
    path = npz(tmp_path, IDS=ids, TAGS=tags, W=w)
    with pytest.raises(InputSpecError) as caught:
        load_input_data(path).requests(MIXED)
    assert message(caught) == (
        f"--input-data {path}: the arrays disagree on the batch size: IDS has 1, TAGS has 1, "
        "W has 2"
    )
    path = npz(tmp_path, IDS=ids, TAGS=np.array([[1, 2]]), W=w[:1])
    with pytest.raises(InputSpecError, match=r"input 'TAGS' is BYTES, expected a bytes \(S\) or"):
        load_input_data(path).requests(MIXED)
    path = npz(tmp_path, X=np.zeros((2, 4), np.float32))
    with pytest.raises(InputSpecError) as caught:
        load_input_data(path).requests(SCALER, batch_size=4)
    assert "--batch-size 4 does not match the arrays' batch dimension 2" in message(caught)
    path = npz(tmp_path, X=np.zeros((1, 2, 2), np.float32))
    with pytest.raises(InputSpecError) as caught:
        load_input_data(path).requests(UNBATCHED)
    assert message(caught).endswith(
        "input 'X' of model 'flat' needs shape [2, 2] (the model does not batch), got [1, 2, 2]"
    )


def test_unreadable_input_files(tmp_path: Path) -> None:
    objects = tmp_path / "objects.npz"
    np.savez(objects, TAGS=np.array([b"a", None], dtype=object))
    with pytest.raises(InputSpecError) as caught:
        load_input_data(objects)
    assert "array 'TAGS' is an object array, which only loads with pickle" in message(caught)
    single = tmp_path / "single.npz"
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npy").rename(single)
    with pytest.raises(InputSpecError, match=r"holds a single \.npy array; expected a \.npz"):
        load_input_data(single)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(InputSpecError, match=r"cannot read it as a \.npz archive"):
        load_input_data(garbage)
    with pytest.raises(InputSpecError) as caught:
        load_input_data(tmp_path / "data.csv")
    assert "expected a .npz archive (numpy.savez) or a .json file" in message(caught)
    with pytest.raises(InputSpecError, match=r"nope\.json: no such file"):
        load_input_data(tmp_path / "nope.json")


# --input-data: perf_analyzer's JSON -------------------------------------------------


def json_file(tmp_path: Path, document: object, name: str = "in.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def test_json_input_data_simple_form(tmp_path: Path) -> None:
    path = json_file(tmp_path, {"data": [{"X": [1, 2, 3, 4]}, {"X": [[0.5, 0.5], [0.5, 0.5]]}]})
    requests = load_input_data(path).requests(SCALER, batch_size=3)
    assert len(requests) == 2
    # Entries are batch-1 samples (perf_analyzer): a batch repeats the sample.
    assert requests[0]["X"].dtype == np.float32 and requests[0]["X"].tolist() == [[1, 2, 3, 4]] * 3
    assert requests[1]["X"].tolist() == [[0.5] * 4] * 3


def test_json_input_data_content_shape_and_b64(tmp_path: Path) -> None:
    ids = np.array([7, 8, 9], dtype="<i4")
    entries = [
        {
            "IDS": {"content": [1, 2, 3, 4, 5], "shape": [5]},
            "TAGS": ["first", "second"],
            "W": {"content": [0, 1, 2, 3, 4, 5], "shape": [3, 2]},
        },
        {
            "IDS": {"b64": base64.b64encode(ids.tobytes()).decode(), "shape": [3]},
            "TAGS": {"b64": base64.b64encode(serialize_bytes(np.array([b"a", b"b"]))).decode()},
            "W": {"content": {"b64": base64.b64encode(np.ones(3, "<f4").tobytes()).decode()}},
        },
    ]
    data = load_input_data(json_file(tmp_path, {"data": entries}))
    first, second = data.requests(MIXED, {"W": (3, 1)})
    assert first["IDS"].dtype == np.int32 and first["IDS"].tolist() == [[1, 2, 3, 4, 5]]
    assert first["TAGS"].tolist() == [[b"first", b"second"]]
    assert first["W"].shape == (1, 3, 2)
    assert second["IDS"].tolist() == [[7, 8, 9]]
    assert second["TAGS"].tolist() == [[b"a", b"b"]]
    assert second["W"].shape == (1, 3, 1)  # from --shape W:3,1
    booleans = model(("B", "BOOL", (2,)), ("H", "FP16", (1,)))
    [request] = load_input_data(
        json_file(tmp_path, {"data": [{"B": [True, False], "H": [1.5]}]})
    ).requests(booleans)
    assert request["B"].tolist() == [[True, False]] and request["H"].dtype == np.float16


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"X": [1, 2, 3]}, "entry 0, input 'X': shape [4] needs 4 value(s), got 3"),
        ({"X": [1, 2, 3, "4"]}, "entry 0, input 'X' (FP32): expected numbers, got '4'"),
        ({"X": [1, 2, 3, True]}, "entry 0, input 'X' (FP32): expected numbers, got True"),
        ({"Y": [1, 2, 3, 4]}, "entry 0: key 'Y' is not an input of model 'scaler' (inputs: X)"),
        ({}, "entry 0: missing input 'X' (FP32 [4]) of model 'scaler'; the file has nothing"),
        (
            {"X": {"content": [1, 2], "shape": [2]}},
            "entry 0, input 'X': shape [2] does not fit the input's dims [4] (the batch "
            "dimension is left out)",
        ),
        ({"X": "1,2,3,4"}, "entry 0, input 'X': expected a list of values"),
        ({"X": {"shape": [4]}}, 'entry 0, input \'X\': the object has no "content" (or "b64")'),
        ({"X": {"content": [1, 2, 3, 4], "dims": [4]}}, "unknown key(s) 'dims'"),
        ({"X": {"b64": "AAAA"}}, "shape [4] of FP32 needs 16 bytes, the b64 data holds 3"),
        ({"X": {"b64": "*notbase64*"}}, '"b64" is not valid base64'),
        ({"X": {"content": [1, 2, 3, 4], "shape": [-4]}}, "must be a list of whole numbers"),
    ],
)
def test_bad_json_entries_are_named(tmp_path: Path, entry: dict, problem: str) -> None:
    path = json_file(tmp_path, {"data": [entry]})
    with pytest.raises(InputSpecError) as caught:
        load_input_data(path).requests(SCALER)
    assert message(caught).startswith(f"--input-data {path}: ")
    assert problem in message(caught)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ([1, 2.5], "(INT32): expected whole numbers in the datatype's range, got 2.5"),
        ([1, 2**31], "(INT32): expected whole numbers in the datatype's range, got 2147483648"),
        (["a", "b"], "(INT32): expected whole numbers in the datatype's range, got 'a'"),
    ],
)
def test_json_integers_must_fit_their_datatype(tmp_path: Path, value: list, problem: str) -> None:
    ints = model(("IDS", "INT32", (2,)))
    path = json_file(tmp_path, {"data": [{"IDS": value}]})
    with pytest.raises(InputSpecError) as caught:
        load_input_data(path).requests(ints)
    assert f"entry 0, input 'IDS' {problem}" in message(caught)


def test_json_variable_dims_need_a_shape(tmp_path: Path) -> None:
    entry = {"IDS": [1, 2], "TAGS": ["a", "b"], "W": [1.0, 2.0, 3.0]}
    path = json_file(tmp_path, {"data": [entry]})
    with pytest.raises(InputSpecError) as caught:
        load_input_data(path).requests(MIXED)
    assert message(caught) == (
        f"--input-data {path}: entry 0, input 'IDS' has variable dims [-1]: give its \"shape\" "
        "in the entry or --shape IDS:<dims>"
    )
    [request] = load_input_data(path).requests(MIXED, {"IDS": (2,), "W": (3, 1)})
    assert request["IDS"].shape == (1, 2) and request["W"].shape == (1, 3, 1)


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ([1, 2], 'expected an object with a "data" list'),
        ({"inputs": []}, 'expected an object with a "data" list'),
        ({"data": []}, '"data" must be a non-empty list, got a list'),
        ({"data": [{"X": [1]}], "extra": 1}, "unknown key(s) 'extra'"),
        ({"data": [[{"X": [1]}]]}, "sequence data streams are not supported"),
        ({"data": ["X"]}, '"data" entry 0 must be an object of input name -> value'),
    ],
)
def test_malformed_json_files(tmp_path: Path, document: object, problem: str) -> None:
    path = json_file(tmp_path, document)
    with pytest.raises(InputSpecError) as caught:
        load_input_data(path)
    assert message(caught).startswith(f"--input-data {path}: ") and problem in message(caught)
    broken = tmp_path / "broken.json"
    broken.write_text('{"data": [')
    with pytest.raises(InputSpecError, match=r"broken\.json: not valid JSON"):
        load_input_data(broken)


# --input-data on the command line -------------------------------------------------------


def test_input_data_options_name_their_models(tmp_path: Path) -> None:
    path = npz(tmp_path, X=np.zeros((1, 4), np.float32))
    files = parse_input_data_options([f"scaler={path}", str(path)])
    assert set(files) == {"scaler", None} and files["scaler"].path == path
    with pytest.raises(InputSpecError, match="--input-data is given twice for model 'scaler'"):
        parse_input_data_options([f"scaler={path}", f"scaler={path}"])
    with pytest.raises(InputSpecError, match="no model name before '='"):
        parse_input_data_options([f"={path}"])
    odd = tmp_path / "a=b.json"
    odd.write_text('{"data": [{"X": [1, 2, 3, 4]}]}')
    assert set(parse_input_data_options([str(odd)])) == {None}  # an existing file wins


def test_plan_checks_the_new_options_before_anything_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = npz(tmp_path, X=np.zeros((1, 4), np.float32))
    with pytest.raises(UsageError) as caught:
        plan(LoadTestOptions(models="scaler,typed", input_data=[str(path)], out=out))
    assert str(caught.value) == (
        f"--input-data {path} names no model but the run loads 2 (scaler, typed); "
        f"write --input-data MODEL={path}"
    )
    with pytest.raises(UsageError, match="model 'other' is not part of this run"):
        plan(LoadTestOptions(models="scaler", input_data=[f"other={path}"], out=out))
    with pytest.raises(UsageError, match=re.escape("--shape 'X': expected NAME:d1,d2,...")):
        plan(LoadTestOptions(models="scaler", shapes=["X"], out=out))
    with pytest.raises(UsageError, match="--batch-size must be >= 1, got 0"):
        plan(LoadTestOptions(batch_size=0, out=out))
    with pytest.raises(UsageError, match=r"--model-repository .*nope: no such folder"):
        plan(LoadTestOptions(model_repository=tmp_path / "nope", out=out))
    with pytest.raises(UsageError, match="--model-repository is for the server this command"):
        plan(LoadTestOptions(model_repository=tmp_path, host="127.0.0.1:8001", out=out))
    with pytest.raises(UsageError, match=r"garbage\.json: not valid JSON"):
        (tmp_path / "garbage.json").write_text("{")
        plan(LoadTestOptions(input_data=[str(tmp_path / "garbage.json")], out=out))
    assert not out.exists()
    every = plan(LoadTestOptions(model_repository=tmp_path, shapes=["X:4"], batch_size=2))
    assert every.models == [] and every.workload_options.shapes == {"X": (4,)}
    assert plan(LoadTestOptions(models="scaler:2,typed")).model_arg == "scaler:2,typed"
