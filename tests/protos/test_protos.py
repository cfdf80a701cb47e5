"""The checked-in stubs are fresh, and our protocol is wire-identical to Triton's."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FileDescriptor

from batchwire.protos import generate, grpc_service_pb2, model_config_pb2

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import model_config_pb2 as triton_config  # noqa: E402
from tritonclient.grpc import service_pb2 as triton_service  # noqa: E402


def test_checked_in_stubs_match_a_fresh_generation() -> None:
    assert generate.stale_files() == [], "run: python -m batchwire.protos.generate"


def _fields(message: Descriptor) -> dict[str, tuple]:
    return {
        f.name: (
            f.number,
            f.type,
            f.is_repeated,
            f.message_type.full_name if f.message_type else None,
            f.enum_type.full_name if f.enum_type else None,
            f.containing_oneof.name if f.containing_oneof else None,
        )
        for f in message.fields
    }


def _enums(enum: EnumDescriptor) -> dict[str, int]:
    return {v.name: v.number for v in enum.values}


def _compare_message(ours: Descriptor, theirs: Descriptor) -> list[str]:
    problems = []
    if _fields(ours) != _fields(theirs):
        problems.append(
            f"{ours.full_name}: fields differ:\n ours {_fields(ours)}\n triton {_fields(theirs)}"
        )
    for name, nested in theirs.nested_types_by_name.items():
        if name not in ours.nested_types_by_name:
            problems.append(f"{ours.full_name}: missing nested message {name}")
        else:
            problems += _compare_message(ours.nested_types_by_name[name], nested)
    for name, enum in theirs.enum_types_by_name.items():
        mine = ours.enum_types_by_name.get(name)
        if mine is None or _enums(mine) != _enums(enum):
            problems.append(f"{ours.full_name}: enum {name} differs")
    return problems


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (grpc_service_pb2.DESCRIPTOR, triton_service.DESCRIPTOR),
        (model_config_pb2.DESCRIPTOR, triton_config.DESCRIPTOR),
    ],
    ids=["grpc_service", "model_config"],
)
def test_messages_are_wire_identical_to_triton(
    ours: FileDescriptor, theirs: FileDescriptor
) -> None:
    assert ours.package == theirs.package == "inference"
    problems = []
    for name, message in theirs.message_types_by_name.items():
        if name not in ours.message_types_by_name:
            problems.append(f"missing message {name}")
            continue
        problems += _compare_message(ours.message_types_by_name[name], message)
    for name, enum in theirs.enum_types_by_name.items():
        if _enums(ours.enum_types_by_name[name]) != _enums(enum):
            problems.append(f"enum {name} differs")
    assert problems == []


def test_service_declares_all_twenty_rpcs_like_triton() -> None:
    ours = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == "inference.GRPCInferenceService"
    signature = lambda s: {  # noqa: E731
        m.name: (
            m.input_type.full_name,
            m.output_type.full_name,
            m.client_streaming,
            m.server_streaming,
        )
        for m in s.methods
    }
    assert len(ours.methods) == 20
    assert signature(ours) == signature(theirs)


def test_key_field_numbers() -> None:
    assert (
        grpc_service_pb2.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number
        == 7
    )
    assert (
        grpc_service_pb2.ModelInferResponse.DESCRIPTOR.fields_by_name["raw_output_contents"].number
        == 6
    )


def test_bytes_round_trip_between_implementations() -> None:
    request = grpc_service_pb2.ModelInferRequest(
        model_name="m", id="7", raw_input_contents=[b"\x01\x02"]
    )
    request.inputs.add(name="INPUT__0", datatype="UINT8", shape=[2])
    request.parameters["priority"].int64_param = 2
    theirs = triton_service.ModelInferRequest.FromString(request.SerializeToString())
    assert theirs.model_name == "m" and theirs.raw_input_contents == [b"\x01\x02"]
    assert theirs.parameters["priority"].int64_param == 2
