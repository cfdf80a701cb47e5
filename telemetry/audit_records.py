"""The audit log's record format: lines, tensor digests and payloads, chain hashes, signatures.

Everything here is pure: it builds and checks bytes, it opens no file and starts no
thread. :mod:`batchwire.telemetry.audit_log` writes these lines, and
:mod:`batchwire.telemetry.audit_verify` reads them back.

A line is one JSON object, ASCII only (``json.dumps``' default escaping: any character
outside ASCII is written ``\\uXXXX``, so every line is valid UTF-8 whatever a model
name or message holds), compact separators (``,`` and ``:``), keys in the fixed order
of :data:`RECORD_KEYS`, terminated by ``\\n``. Every record, whatever its type, starts
with ``seq`` (1 for the first record of a log, +1 per record across all its files)
and ends with ``prev``: the hex SHA-256 of the previous line's bytes without its
newline (:func:`line_hash`), :data:`GENESIS` for the first record of a log. The record
types and their keys are described in :mod:`batchwire.telemetry.audit_log`.

Tensors are digested as the KServe v2 wire carries them (:func:`tensor_bytes`):

- numeric and BOOL tensors: their elements in row-major order, little-endian, each
  of the datatype's size (BOOL: one byte, 0 or 1; BF16: the two bytes of its raw
  ``uint16`` storage). A client that sent ``raw_input_contents`` can compare the
  digest with the SHA-256 of what it sent.
- BYTES tensors: each element, row-major, as a 4-byte little-endian length followed
  by its bytes (``str`` elements as UTF-8).

Times are RFC 3339 in UTC with microseconds (:func:`rfc3339`).

A checkpoint signs :func:`checkpoint_message` -- ``batchwire-audit-v1 checkpoint
<seq> <head>``, where ``head`` is the checkpoint's own ``prev`` -- with Ed25519; its
``key_id`` is the first 16 hex digits of the SHA-256 of the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from batchwire.core.datatypes import NUMPY_DTYPES, WIRE_DTYPES

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "FILE_PATTERN",
    "GENESIS",
    "RECORD_KEYS",
    "AuditEvent",
    "checkpoint_body",
    "checkpoint_message",
    "describe_key",
    "file_name",
    "file_number",
    "key_id",
    "line_hash",
    "open_body",
    "parse_rfc3339",
    "record_line",
    "request_body",
    "retention_body",
    "rfc3339",
    "sign_checkpoint",
    "tensor_bytes",
    "tensor_digest",
    "verify_checkpoint",
]

#: ``prev`` of the very first record of a log.
GENESIS = "0" * 64

#: The keys of each record type, in the order they are written.
RECORD_KEYS: dict[str, tuple[str, ...]] = {
    "request": (
        "seq",
        "type",
        "received",
        "answered",
        "request_id",
        "model",
        "version",
        "model_sha256",
        "config_sha256",
        "principal",
        "code",
        "message",
        "inputs",
        "outputs",
        "batch_id",
        "queue_us",
        "compute_us",
        "cached",
        "prev",
    ),
    "open": (
        "seq",
        "type",
        "time",
        "reason",
        "file",
        "previous_file",
        "previous_end",
        "prev",
    ),
    "checkpoint": ("seq", "type", "time", "reason", "key_id", "signature", "prev"),
    "retention": ("seq", "type", "time", "removed", "last_removed_hash", "prev"),
}

#: Names of the log's files: ``audit-000001.jsonl``, ``audit-000002.jsonl``... (a
#: number past 999999 simply gets longer; files are ordered by number, not by name).
FILE_PATTERN = re.compile(r"audit-(\d{6,})\.jsonl")

_LENGTH = struct.Struct("<I")
_SIGNATURE_CONTEXT = b"batchwire-audit-v1 checkpoint"


def file_name(number: int) -> str:
    """The name of the log's file number ``number`` (from 1)."""
    return f"audit-{number:06d}.jsonl"


def file_number(name: str) -> int | None:
    """The number in a log file's name, or None when ``name`` is not one of the log's files."""
    match = FILE_PATTERN.fullmatch(name)
    return int(match.group(1)) if match else None


@dataclass(slots=True)
class AuditEvent:
    """One answered (or refused) request, as the data plane hands it to the audit log.

    Built once per request on the event loop: it holds references only (the arrays are
    hashed later, on the writer thread), so the arrays must not change afterwards.
    """

    #: ``time.time_ns()`` when the request entered the pipeline.
    received_ns: int
    #: ``time.time_ns()`` when its answer was known.
    answered_ns: int
    request_id: str
    model: str
    #: "" when the request never reached a version.
    version: str
    #: "" when unknown.
    model_sha256: str
    #: "" when unknown.
    config_sha256: str
    #: "" when no auth is configured.
    principal: str
    #: gRPC status name: "OK", "INVALID_ARGUMENT", ...
    code: str
    #: The error message, "" when OK.
    message: str
    #: (name, v2 datatype, array) per input, batch dimension included.
    inputs: tuple[tuple[str, str, np.ndarray], ...]
    outputs: tuple[tuple[str, str, np.ndarray], ...]
    #: None when no batch ran it (refused, answered from the cache).
    batch_id: int | None
    queue_ns: int
    compute_ns: int
    #: Input and output names whose payload is replaced by null and ``"redacted": true``.
    redact: frozenset[str] = frozenset()
    #: Answered from the response cache.
    cached: bool = False


# -- tensors ----------------------------------------------------------------------------


def tensor_bytes(array: np.ndarray, datatype: str) -> bytes | memoryview:
    """``array`` as the KServe v2 wire carries a tensor of ``datatype`` (see the module doc).

    A C-contiguous little-endian numeric array is not copied: the result is a view of
    its memory. Raises ValueError when the array's dtype is not ``datatype``'s storage
    dtype (a FP32 tensor must be ``float32``, a BF16 one ``uint16``...) or the datatype
    is unknown, TypeError for a BYTES element that is neither bytes nor str.
    """
    if datatype == "BYTES":
        return _bytes_elements(array)
    wire = WIRE_DTYPES.get(datatype)
    if (
        wire is not None
        and type(array) is np.ndarray
        and array.dtype == wire
        and array.flags.c_contiguous
        and array.size  # memoryview cannot cast an empty shape
    ):
        return array.data.cast("B")  # the common case, checked in a quarter of the time
    if wire is None:
        raise ValueError(f"unknown datatype {datatype!r}; expected one of {', '.join(WIRE_DTYPES)}")
    array = np.asarray(array)
    if array.dtype.kind != wire.kind or array.dtype.itemsize != wire.itemsize:
        raise ValueError(
            f"a {datatype} tensor is stored as numpy {NUMPY_DTYPES[datatype]}, got {array.dtype}"
        )
    # Converts the byte order only (a no-op on little-endian hosts) and makes it
    # C-contiguous, copying only when either is needed.
    flat = np.ascontiguousarray(array, dtype=wire).reshape(-1)
    return flat.view(np.uint8).data


def _bytes_elements(array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for index, item in enumerate(np.asarray(array, dtype=np.object_).reshape(-1)):
        if isinstance(item, str):
            data = item.encode("utf-8")
        elif isinstance(item, bytes | bytearray | memoryview):
            data = bytes(item)
        else:
            raise TypeError(
                f"BYTES element {index} is {type(item).__name__}, expected bytes or str"
            )
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def tensor_digest(array: np.ndarray, datatype: str) -> str:
    """Hex SHA-256 of :func:`tensor_bytes` (hashlib releases the GIL on large buffers)."""
    return hashlib.sha256(tensor_bytes(array, datatype)).hexdigest()


def _tensor_entry(name: str, datatype: str, array: np.ndarray, payload: bool, redacted: bool):
    entry: dict[str, Any] = {
        "name": name,
        "datatype": datatype,
        "shape": [int(d) for d in np.shape(array)],
    }
    try:
        data = tensor_bytes(array, datatype)
    except (TypeError, ValueError) as exc:
        # The request is still recorded: an audit log that skips a request because one
        # of its tensors could not be encoded would hide it.
        entry["sha256"] = None
        entry["error"] = str(exc)
        return entry
    entry["sha256"] = hashlib.sha256(data).hexdigest()
    if payload:
        if redacted:
            entry["payload"] = None
            entry["redacted"] = True
        else:
            entry["payload"] = base64.b64encode(data).decode("ascii")
    return entry


def array_json(name: str, datatype: str, array: np.ndarray, payload: bool, redacted: bool) -> str:
    """:func:`_tensor_entry` as JSON text, built by hand (see :func:`request_body`)."""
    try:
        data = tensor_bytes(array, datatype)
    except (TypeError, ValueError):
        return json.dumps(
            _tensor_entry(name, datatype, array, payload, redacted), separators=(",", ":")
        )
    return tensor_json(name, datatype, np.shape(array), data, payload, redacted)


def tensor_json(
    name: str,
    datatype: str,
    shape: tuple[int, ...],
    data: bytes | memoryview,
    payload: bool,
    redacted: bool,
) -> str:
    """A tensor's entry of a request record, from its wire bytes ``data`` (what
    :func:`tensor_bytes` gives): the text ``json.dumps`` writes for it."""
    dims = ",".join([str(int(d)) for d in shape])
    text = (
        f'{{"name":{_string(name)},"datatype":{_string(datatype)},"shape":[{dims}],'
        f'"sha256":"{hashlib.sha256(data).hexdigest()}"'
    )
    if payload:
        if redacted:
            return text + ',"payload":null,"redacted":true}'
        return text + f',"payload":"{base64.b64encode(data).decode("ascii")}"}}'
    return text + "}"


# -- records ----------------------------------------------------------------------------


#: The last whole second rfc3339 formatted, and its text (replaced as one tuple).
_last_second: tuple[int, str] = (-1, "")
#: JSON's own string encoder with ASCII escapes (what json.dumps uses by default).
_string = json.encoder.encode_basestring_ascii


def rfc3339(ns: int) -> str:
    """``ns`` nanoseconds since the epoch as RFC 3339 UTC with microseconds.

    >>> rfc3339(1_796_686_475_123_456_789)
    '2026-12-07T23:34:35.123456Z'
    """
    global _last_second
    seconds, rest = divmod(ns, 1_000_000_000)
    cached = _last_second
    if cached[0] != seconds:
        # One strftime per second of records: the writer formats two times per record.
        cached = _last_second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{cached[1]}.{rest // 1000:06d}Z"


def parse_rfc3339(text: str) -> datetime:
    """An aware datetime from an ISO 8601 / RFC 3339 time; a time without offset is UTC.

    Raises ValueError naming the text when it is not such a time.
    """
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"expected an ISO 8601 time such as 2026-12-07T23:34:35Z, got {text!r}"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def line_hash(line: bytes | bytearray | memoryview) -> str:
    """Hex SHA-256 of a line's bytes, without its newline (the next record's ``prev``)."""
    return hashlib.sha256(line).hexdigest()


def _body(fields: dict[str, Any]) -> str:
    # The keys between "seq" and "prev", as a JSON object's inside: record_line wraps
    # them, so a record is encoded once and placed at whatever seq the writer reaches.
    return json.dumps(fields, separators=(",", ":"), allow_nan=False)[1:-1]


def record_line(seq: int, body: str, prev: str) -> bytes:
    """One record's line, newline included: ``{"seq":<seq>,<body>,"prev":"<prev>"}``."""
    return f'{{"seq":{seq},{body},"prev":"{prev}"}}\n'.encode("ascii")


def request_body(event: AuditEvent, payloads: bool) -> str:
    """The body of ``event``'s request record (hashes every tensor: writer thread only).

    ``payloads``: add each tensor's bytes as base64 ``payload``, except the names in
    ``event.redact``, whose ``payload`` is null and which carry ``"redacted": true``.
    Without ``payloads`` there is no ``payload`` key at all.

    The text is exactly what ``json.dumps`` gives for the record's fields in order
    (compact separators, ASCII escapes), built by hand: the writer holds its GIL while
    it builds records, and this is a third of ``json.dumps``' cost
    (:func:`request_fields` is the same record as a dict).
    """
    redact = event.redact
    return request_text(
        event.received_ns,
        event.answered_ns,
        event_strings(event),
        ",".join(
            array_json(name, dt, array, payloads, name in redact)
            for name, dt, array in event.inputs
        ),
        ",".join(
            array_json(name, dt, array, payloads, name in redact)
            for name, dt, array in event.outputs
        ),
        event.batch_id,
        event.queue_ns,
        event.compute_ns,
        event.cached,
    )


def event_strings(event: AuditEvent) -> tuple[str, str, str, str, str, str, str, str]:
    """The string fields of ``event`` in :func:`request_text`'s order: request_id, model,
    version, model_sha256, config_sha256, principal, code, message."""
    return (
        event.request_id,
        event.model,
        event.version,
        event.model_sha256,
        event.config_sha256,
        event.principal,
        event.code,
        event.message,
    )


def request_text(
    received_ns: int,
    answered_ns: int,
    strings: tuple[str, str, str, str, str, str, str, str],
    inputs: str,
    outputs: str,
    batch_id: int | None,
    queue_ns: int,
    compute_ns: int,
    cached: bool,
) -> str:
    """A request record's body from its parts: ``strings`` are request_id, model,
    version, model_sha256, config_sha256, principal, code and message; ``inputs`` and
    ``outputs`` the tensors' entries (:func:`tensor_json`) joined by commas."""
    request_id, model, version, model_sha, config_sha, principal, code, message = strings
    batch = "null" if batch_id is None else str(int(batch_id))
    return (
        f'"type":"request","received":"{rfc3339(received_ns)}",'
        f'"answered":"{rfc3339(answered_ns)}",'
        f'"request_id":{_string(request_id)},"model":{_string(model)},'
        f'"version":{_string(version)},"model_sha256":{_string(model_sha)},'
        f'"config_sha256":{_string(config_sha)},'
        f'"principal":{_string(principal)},"code":{_string(code)},'
        f'"message":{_string(message)},"inputs":[{inputs}],"outputs":[{outputs}],'
        f'"batch_id":{batch},"queue_us":{queue_ns / 1000!r},'
        f'"compute_us":{compute_ns / 1000!r},'
        f'"cached":{"true" if cached else "false"}'
    )


def request_fields(event: AuditEvent, payloads: bool) -> dict[str, Any]:
    """The fields :func:`request_body` writes, as a dict in written order (for tests and
    tools; the writer uses the hand-built text)."""
    redact = event.redact
    return {
        "type": "request",
        "received": rfc3339(event.received_ns),
        "answered": rfc3339(event.answered_ns),
        "request_id": event.request_id,
        "model": event.model,
        "version": event.version,
        "model_sha256": event.model_sha256,
        "config_sha256": event.config_sha256,
        "principal": event.principal,
        "code": event.code,
        "message": event.message,
        "inputs": [
            _tensor_entry(name, dt, array, payloads, name in redact)
            for name, dt, array in event.inputs
        ],
        "outputs": [
            _tensor_entry(name, dt, array, payloads, name in redact)
            for name, dt, array in event.outputs
        ],
        "batch_id": event.batch_id,
        # Microseconds as floats with the nanosecond digits kept (12.345 = 12345 ns).
        "queue_us": event.queue_ns / 1000,
        "compute_us": event.compute_ns / 1000,
        "cached": event.cached,
    }


def open_body(
    time_ns: int, reason: str, file: str, previous_file: str | None, previous_end: str | None
) -> str:
    """The body of a file's ``open`` record (see :mod:`batchwire.telemetry.audit_log`)."""
    return _body(
        {
            "type": "open",
            "time": rfc3339(time_ns),
            "reason": reason,
            "file": file,
            "previous_file": previous_file,
            "previous_end": previous_end,
        }
    )


def retention_body(time_ns: int, removed: list[str], last_removed_hash: str) -> str:
    """The body of a ``retention`` record: the files it removes, oldest first."""
    return _body(
        {
            "type": "retention",
            "time": rfc3339(time_ns),
            "removed": removed,
            "last_removed_hash": last_removed_hash,
        }
    )


def checkpoint_message(seq: int, head: str) -> bytes:
    """What a checkpoint at ``seq`` signs: it binds the position to the chain head."""
    return b"%s %d %s" % (_SIGNATURE_CONTEXT, seq, head.encode("ascii"))


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw 32-byte public key."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def describe_key(key: object) -> str:
    """What a loaded key is, for error messages: ``RSA private key (2048 bits)``,
    ``EC public key (secp256r1)``, ``Ed448 private key``..."""
    name = type(key).__name__.lstrip("_")
    for half in ("PrivateKey", "PublicKey"):
        if name.endswith(half):
            name = f"{name.removesuffix(half)} {half[:-3].lower()} key"
            break
    curve = getattr(key, "curve", None)
    if curve is not None:
        return f"{name} ({getattr(curve, 'name', curve)})"
    size = getattr(key, "key_size", None)
    return f"{name} ({size} bits)" if isinstance(size, int) else name


def sign_checkpoint(key: Ed25519PrivateKey, seq: int, head: str) -> str:
    """Base64 Ed25519 signature of :func:`checkpoint_message`."""
    return base64.b64encode(key.sign(checkpoint_message(seq, head))).decode("ascii")


def verify_checkpoint(public_key: Ed25519PublicKey, seq: int, head: str, signature: str) -> bool:
    """Whether ``signature`` (base64) signs checkpoint ``seq`` at ``head`` with this key."""
    from cryptography.exceptions import InvalidSignature

    try:
        raw = base64.b64decode(signature, validate=True)
        public_key.verify(raw, checkpoint_message(seq, head))
    except (InvalidSignature, ValueError):
        return False
    return True


def checkpoint_body(
    time_ns: int, reason: str, seq: int, head: str, key: Ed25519PrivateKey | None, key_hex: str
) -> str:
    """The body of checkpoint ``seq`` whose ``prev`` is ``head``: signed when ``key`` is given.

    ``key_hex`` is :func:`key_id` of the key's public half (computed once by the caller).
    Without a key, ``key_id`` and ``signature`` are null: the chain still links every
    record, but nothing proves who wrote it.
    """
    return _body(
        {
            "type": "checkpoint",
            "time": rfc3339(time_ns),
            "reason": reason,
            "key_id": key_hex if key is not None else None,
            "signature": sign_checkpoint(key, seq, head) if key is not None else None,
        }
    )
