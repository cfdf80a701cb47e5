"""The audit record format: tensor wire bytes and digests, record lines, times, signatures."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from batchwire.telemetry.audit_records import (
    GENESIS,
    RECORD_KEYS,
    AuditEvent,
    checkpoint_body,
    checkpoint_message,
    file_name,
    file_number,
    key_id,
    line_hash,
    open_body,
    parse_rfc3339,
    record_line,
    request_body,
    request_fields,
    retention_body,
    rfc3339,
    sign_checkpoint,
    tensor_bytes,
    tensor_digest,
    verify_checkpoint,
)

#: (datatype, array, the bytes the v2 wire carries for it, built by hand).
WIRE_CASES = [
    ("BOOL", np.array([[True, False], [False, True]]), b"\x01\x00\x00\x01"),
    ("UINT8", np.array([1, 255], dtype=np.uint8), b"\x01\xff"),
    ("UINT16", np.array([1, 0x0203], dtype=np.uint16), b"\x01\x00\x03\x02"),
    ("UINT32", np.array([0x01020304], dtype=np.uint32), b"\x04\x03\x02\x01"),
    ("UINT64", np.array([2**64 - 2], dtype=np.uint64), b"\xfe" + b"\xff" * 7),
    ("INT8", np.array([-1, 2], dtype=np.int8), b"\xff\x02"),
    ("INT16", np.array([-2, 258], dtype=np.int16), b"\xfe\xff\x02\x01"),
    ("INT32", np.array([[1, 2], [3, -4]], dtype=np.int32), struct.pack("<4i", 1, 2, 3, -4)),
    ("INT64", np.array([-(2**40)], dtype=np.int64), struct.pack("<q", -(2**40))),
    ("FP16", np.array([1.0, -2.0], dtype=np.float16), b"\x00\x3c\x00\xc0"),
    ("BF16", np.array([0x3F80], dtype=np.uint16), b"\x80\x3f"),
    ("FP32", np.array([1.5, -0.25], dtype=np.float32), struct.pack("<2f", 1.5, -0.25)),
    ("FP64", np.array([[3.25]], dtype=np.float64), struct.pack("<d", 3.25)),
    (
        "BYTES",
        np.array([b"ab", "\u00e9", b""], dtype=np.object_),
        b"\x02\x00\x00\x00ab" + b"\x02\x00\x00\x00\xc3\xa9" + b"\x00\x00\x00\x00",
    ),
]


@pytest.mark.parametrize(("datatype", "array", "wire"), WIRE_CASES, ids=[c[0] for c in WIRE_CASES])
def test_tensor_bytes_are_the_v2_wire_bytes(datatype: str, array: np.ndarray, wire: bytes) -> None:
    assert bytes(tensor_bytes(array, datatype)) == wire
    assert tensor_digest(array, datatype) == hashlib.sha256(wire).hexdigest()


def test_tensor_bytes_are_row_major_little_endian_whatever_the_layout() -> None:
    matrix = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32)
    expected = struct.pack("<6i", 1, 2, 3, 4, 5, 6)
    assert bytes(tensor_bytes(np.asfortranarray(matrix), "INT32")) == expected
    assert bytes(tensor_bytes(matrix.T.copy().T, "INT32")) == expected
    assert bytes(tensor_bytes(matrix.astype(">i4"), "INT32")) == expected
    assert bytes(tensor_bytes(np.array([[b"x"], [b"yz"]], dtype=np.object_), "BYTES")) == (
        b"\x01\x00\x00\x00x\x02\x00\x00\x00yz"
    )


def test_a_contiguous_tensor_is_not_copied() -> None:
    array = np.zeros((2, 2), dtype=np.float32)
    view = tensor_bytes(array, "FP32")
    assert isinstance(view, memoryview)
    array[1, 1] = 1.0
    assert bytes(view)[12:] == struct.pack("<f", 1.0)


def test_tensor_bytes_refuse_an_array_of_another_dtype() -> None:
    with pytest.raises(ValueError, match=r"a FP32 tensor is stored as numpy float32, got float64"):
        tensor_bytes(np.zeros(2), "FP32")
    with pytest.raises(ValueError, match=r"unknown datatype 'FP8'"):
        tensor_bytes(np.zeros(2), "FP8")
    with pytest.raises(TypeError, match=r"BYTES element 1 is int, expected bytes or str"):
        tensor_bytes(np.array([b"a", 5], dtype=np.object_), "BYTES")


def test_times_are_rfc3339_utc_with_microseconds() -> None:
    assert rfc3339(1_796_686_475_123_456_789) == "2026-12-07T23:34:35.123456Z"
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"
    utc = timezone.utc
    assert parse_rfc3339("2026-12-07T23:34:35.123456Z") == datetime(
        2026, 12, 7, 23, 34, 35, 123456, tzinfo=utc
    )
    assert parse_rfc3339("2026-12-08T01:34:35+02:00") == datetime(
        2026, 12, 7, 23, 34, 35, tzinfo=utc
    )
    naive = parse_rfc3339("2026-12-07T23:34:35")
    assert naive == datetime(2026, 12, 7, 23, 34, 35, tzinfo=utc)
    assert naive.utcoffset() == timedelta(0)
    with pytest.raises(ValueError, match=r"expected an ISO 8601 time .* got 'yesterday'"):
        parse_rfc3339("yesterday")


def test_file_names_sort_and_parse() -> None:
    assert file_name(1) == "audit-000001.jsonl"
    assert file_name(1234567) == "audit-1234567.jsonl"
    assert file_number("audit-000042.jsonl") == 42
    assert file_number("audit-42.jsonl") is None
    assert file_number("audit-000042.jsonl.tmp") is None


def event(**changes: object) -> AuditEvent:
    fields: dict[str, object] = {
        "received_ns": 1_796_686_475_123_456_789,
        "answered_ns": 1_796_686_475_125_000_000,
        "request_id": "req-1",
        "model": "mlp",
        "version": "3",
        "model_sha256": "a" * 64,
        "config_sha256": "b" * 64,
        "principal": "alice",
        "code": "OK",
        "message": "",
        "inputs": (
            ("X", "FP32", np.array([[1.0, 2.0]], dtype=np.float32)),
            ("secret", "BYTES", np.array([b"pin 1234"], dtype=np.object_)),
        ),
        "outputs": (("Y", "INT64", np.array([[7]], dtype=np.int64)),),
        "batch_id": 12,
        "queue_ns": 12_345,
        "compute_ns": 2_000_000,
    }
    fields.update(changes)
    return AuditEvent(**fields)  # type: ignore[arg-type]


X_WIRE = struct.pack("<2f", 1.0, 2.0)
SECRET_WIRE = b"\x08\x00\x00\x00pin 1234"
Y_WIRE = struct.pack("<q", 7)


def test_a_request_record_carries_every_field_of_its_event() -> None:
    line = record_line(5, request_body(event(), payloads=False), "c" * 64)
    assert line.endswith(b"}\n") and line.count(b"\n") == 1
    record = json.loads(line)
    assert list(record) == list(RECORD_KEYS["request"])
    assert record == {
        "seq": 5,
        "type": "request",
        "received": "2026-12-07T23:34:35.123456Z",
        "answered": "2026-12-07T23:34:35.125000Z",
        "request_id": "req-1",
        "model": "mlp",
        "version": "3",
        "model_sha256": "a" * 64,
        "config_sha256": "b" * 64,
        "principal": "alice",
        "code": "OK",
        "message": "",
        "inputs": [
            {
                "name": "X",
                "datatype": "FP32",
                "shape": [1, 2],
                "sha256": hashlib.sha256(X_WIRE).hexdigest(),
            },
            {
                "name": "secret",
                "datatype": "BYTES",
                "shape": [1],
                "sha256": hashlib.sha256(SECRET_WIRE).hexdigest(),
            },
        ],
        "outputs": [
            {
                "name": "Y",
                "datatype": "INT64",
                "shape": [1, 1],
                "sha256": hashlib.sha256(Y_WIRE).hexdigest(),
            }
        ],
        "batch_id": 12,
        "queue_us": 12.345,
        "compute_us": 2000.0,
        "cached": False,
        "prev": "c" * 64,
    }
    # Compact separators, exactly what json.dumps writes for this object.
    assert line == json.dumps(record, separators=(",", ":")).encode() + b"\n"


def test_payloads_are_base64_wire_bytes_and_redacted_names_are_null() -> None:
    body = request_body(event(redact=frozenset({"secret"})), payloads=True)
    record = json.loads(record_line(1, body, GENESIS))
    x, secret = record["inputs"]
    assert base64.b64decode(x["payload"]) == X_WIRE
    assert "redacted" not in x
    assert list(secret) == ["name", "datatype", "shape", "sha256", "payload", "redacted"]
    assert secret["payload"] is None and secret["redacted"] is True
    assert secret["sha256"] == hashlib.sha256(SECRET_WIRE).hexdigest()
    assert base64.b64decode(record["outputs"][0]["payload"]) == Y_WIRE


def test_a_refused_cached_or_odd_request_is_still_recorded() -> None:
    refused = event(
        version="",
        model_sha256="",
        config_sha256="",
        principal="",
        code="INVALID_ARGUMENT",
        message="input 'X': expected FP32, got \u00fcnicode",
        model="mod\u00e8le",
        outputs=(),
        batch_id=None,
        queue_ns=0,
        compute_ns=0,
        cached=True,
        inputs=(("X", "FP32", np.zeros(2, dtype=np.float64)),),
    )
    line = record_line(2, request_body(refused, payloads=True), GENESIS)
    assert line.isascii()  # non-ASCII text is escaped: any line is valid UTF-8
    record = json.loads(line)
    assert record["model"] == "mod\u00e8le"
    assert record["message"] == "input 'X': expected FP32, got \u00fcnicode"
    assert (record["batch_id"], record["queue_us"], record["compute_us"]) == (None, 0.0, 0.0)
    assert record["cached"] is True and record["outputs"] == []
    assert record["inputs"] == [
        {
            "name": "X",
            "datatype": "FP32",
            "shape": [2],
            "sha256": None,
            "error": "a FP32 tensor is stored as numpy float32, got float64",
        }
    ]


def test_other_record_bodies_keep_their_key_order() -> None:
    records = {
        "open": open_body(0, "rotate", "audit-000002.jsonl", "audit-000001.jsonl", "clean"),
        "retention": retention_body(0, ["audit-000001.jsonl"], "d" * 64),
        "checkpoint": checkpoint_body(0, "close", 9, "e" * 64, None, ""),
    }
    for kind, body in records.items():
        record = json.loads(record_line(9, body, "e" * 64))
        assert list(record) == list(RECORD_KEYS[kind])
        assert record["type"] == kind and record["time"] == "1970-01-01T00:00:00.000000Z"
    assert json.loads(record_line(9, records["checkpoint"], "e" * 64))["signature"] is None


def test_checkpoints_sign_seq_and_head_with_ed25519() -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert key_id(public) == hashlib.sha256(raw).hexdigest()[:16]
    head = line_hash(b'{"seq":1}')
    assert head == hashlib.sha256(b'{"seq":1}').hexdigest()
    assert checkpoint_message(7, head) == b"batchwire-audit-v1 checkpoint 7 " + head.encode()
    signature = sign_checkpoint(key, 7, head)
    public.verify(base64.b64decode(signature), checkpoint_message(7, head))
    assert verify_checkpoint(public, 7, head, signature)
    assert not verify_checkpoint(public, 8, head, signature)
    assert not verify_checkpoint(public, 7, GENESIS, signature)
    assert not verify_checkpoint(Ed25519PrivateKey.generate().public_key(), 7, head, signature)
    assert not verify_checkpoint(public, 7, head, "not base64!")
    record = json.loads(
        record_line(7, checkpoint_body(0, "records", 7, head, key, key_id(public)), head)
    )
    assert record["key_id"] == key_id(public)
    assert verify_checkpoint(public, 7, head, record["signature"])


@pytest.mark.parametrize("payloads", [False, True])
@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"request_id": 'quote " back \\ slash \n newline', "principal": "Zoë ☃", "cached": True},
        {
            "code": "INVALID_ARGUMENT",
            "message": "shape [1, 63], expected [1, 64]",
            "batch_id": None,
        },
        {"redact": frozenset({"secret", "Y"}), "queue_ns": 0, "compute_ns": 1},
        # Not encodable (a float64 FP32 tensor): the entry carries the error instead.
        {"inputs": (("X", "FP32", np.zeros((1, 2))),), "outputs": ()},
        {"inputs": (("E", "FP32", np.zeros((0, 4), np.float32)),), "outputs": ()},
        {"outputs": (("T", "INT64", np.arange(6, dtype=np.int64).reshape(2, 3).T),)},
    ],
)
def test_the_hand_built_request_body_is_exactly_json_dumps(
    changes: dict[str, object], payloads: bool
) -> None:
    """request_body builds its text by hand for speed; it must equal json.dumps of the
    same fields, byte for byte."""
    subject = event(**changes)
    expected = json.dumps(request_fields(subject, payloads), separators=(",", ":"))[1:-1]
    assert request_body(subject, payloads) == expected
