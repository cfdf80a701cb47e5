"""Span records packed into rows of bytes, for the pipe to the exporter process.

The server packs each record as it is recorded (:class:`RecordPacker`, on the event
loop) into a few byte strings of fixed-size rows: request spans, batch spans, the
batch spans' links, and the request ids they name. The exporter process reads those
as numpy structured arrays (:func:`request_rows`, :func:`batch_rows`,
:func:`link_rows`) and encodes whole groups of spans at once
(:mod:`batchwire.telemetry.otlp_records`), with no Python object per record on its
side.

Measured here against the pickled tuples this replaced (per traced request, its span
plus its share of a batch span of three): the exporter process spent 3.8 us
unpickling and 1.0 us rebuilding records, and now a fraction of a microsecond
reading rows. Packing costs the loop about 3 us per record; pickling cost the writer
thread (holding the GIL) about 2 us.

Rows are big-endian, so that an id packed as two or one ``Q`` is already the
big-endian bytes OTLP sends. Strings that repeat (method, model, version, device)
are indexes into the message's own ``strings``: each message stands alone, so
nothing has to stay in step between the two processes. Records with an error or
with tensor shapes (trace level TENSORS) are rare and vary in shape; they travel
as plain tuples in ``rare`` and are encoded one by one.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from batchwire.telemetry.span_records import BatchSpanRecord, RequestSpanRecord, SpanRecord

__all__ = [
    "BATCH_DTYPE",
    "LINK_DTYPE",
    "REQUEST_DTYPE",
    "PackedRecords",
    "RecordPacker",
    "batch_record",
    "batch_rows",
    "link_ends",
    "link_rows",
    "pack_records",
    "rare_records",
    "request_id_ends",
    "request_record",
    "request_rows",
    "unpack_records",
]

_MASK64 = (1 << 64) - 1

#: trace id (2 Q), span id, parent span id (0: none), parent kind (0 none, 1 local,
#: 2 remote), method, model, version (string indexes), request id size in bytes,
#: batch size, then the eight times of RequestSpanRecord from start_ns to send_ns,
#: then the gRPC status.
_REQUEST_ROW = struct.Struct(">QQQQBIIII9qi")
REQUEST_DTYPE = np.dtype(
    [
        ("trace_id", "u1", (16,)),
        ("span_id", "u1", (8,)),
        ("parent_span_id", "u1", (8,)),
        ("parent_kind", "u1"),
        ("method", ">u4"),
        ("model", ">u4"),
        ("version", ">u4"),
        ("request_id_size", ">u4"),
        ("batch_size", ">i8"),
        ("start_ns", ">i8"),
        ("end_ns", ">i8"),
        ("received_ns", ">i8"),
        ("queued_ns", ">i8"),
        ("input_end_ns", ">i8"),
        ("infer_end_ns", ">i8"),
        ("output_end_ns", ">i8"),
        ("send_ns", ">i8"),
        ("grpc_status", ">i4"),
    ]
)
#: trace id, span id, model, version, device (string indexes), size, padded size,
#: request count, instance, start, compute input end, compute infer end, end, links.
_BATCH_ROW = struct.Struct(">QQQIII8qI")
BATCH_DTYPE = np.dtype(
    [
        ("trace_id", "u1", (16,)),
        ("span_id", "u1", (8,)),
        ("model", ">u4"),
        ("version", ">u4"),
        ("device", ">u4"),
        ("size", ">i8"),
        ("padded_size", ">i8"),
        ("request_count", ">i8"),
        ("instance", ">i8"),
        ("start_ns", ">i8"),
        ("input_end_ns", ">i8"),
        ("infer_end_ns", ">i8"),
        ("end_ns", ">i8"),
        ("link_count", ">u4"),
    ]
)
#: A link: trace id, span id.
_LINK_ROW = struct.Struct(">QQQ")
LINK_DTYPE = np.dtype([("trace_id", "u1", (16,)), ("span_id", "u1", (8,))])
if (
    REQUEST_DTYPE.itemsize != _REQUEST_ROW.size
    or BATCH_DTYPE.itemsize != _BATCH_ROW.size
    or LINK_DTYPE.itemsize != _LINK_ROW.size
):  # pragma: no cover - a guard for whoever edits the rows
    raise RuntimeError("span record rows and their numpy dtypes disagree in size")

#: A record's fields as a plain tuple tell its type by their number.
_RECORD_TYPES = {len(t._fields): t for t in (RequestSpanRecord, BatchSpanRecord)}
if len(_RECORD_TYPES) != 2:  # pragma: no cover - a guard for whoever edits the records
    raise RuntimeError("span record types must differ in length")


class PackedRecords(NamedTuple):
    """One message's span records as rows (see the module docstring)."""

    strings: tuple[str, ...]
    requests: bytes
    batches: bytes
    links: bytes
    #: The request ids of ``requests``, UTF-8, one after the other.
    request_ids: bytes
    #: Records with an error or tensor shapes, as plain tuples.
    rare: tuple[tuple, ...]

    @property
    def count(self) -> int:
        """How many spans the message holds."""
        return (
            len(self.requests) // _REQUEST_ROW.size
            + len(self.batches) // _BATCH_ROW.size
            + len(self.rare)
        )


class RecordPacker:
    """Packs records one at a time into the next message (about 3 us per record).

    Not thread-safe: its owner serializes :meth:`add` and :meth:`take`.
    """

    __slots__ = ("_batches", "_index", "_links", "_rare", "_request_ids", "_requests", "count")

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        #: String -> its index in the message's ``strings``.
        self._index: dict[str, int] = {}
        self._requests: list[bytes] = []
        self._batches: list[bytes] = []
        self._links: list[bytes] = []
        self._request_ids: list[bytes] = []
        self._rare: list[tuple] = []
        #: Records added so far.
        self.count = 0

    def _string(self, value: str) -> int:
        index = self._index
        if (at := index.get(value)) is None:
            at = index[value] = len(index)
        return at

    def add(self, record: SpanRecord) -> None:
        """Pack ``record`` into the message."""
        self.count += 1
        if type(record) is RequestSpanRecord:
            if record.error_type or record.tensors:
                self._rare.append(tuple(record))
            else:
                self._request(record)
        elif record.error_type:
            self._rare.append(tuple(record))
        else:
            self._batch(record)  # type: ignore[arg-type]

    def _request(self, record: RequestSpanRecord) -> None:
        (trace_id, span_id, parent, remote, method, model, version, request_id, *numbers) = record
        size = 0
        if request_id:
            encoded = request_id.encode()
            self._request_ids.append(encoded)
            size = len(encoded)
        string = self._string
        self._requests.append(
            _pack_request(
                trace_id >> 64,
                trace_id & _MASK64,
                span_id,
                parent,
                (2 if remote else 1) if parent else 0,
                string(method),
                string(model),
                string(version),
                size,
                *numbers[:10],  # batch size, eight times, gRPC status
            )
        )

    def _batch(self, record: BatchSpanRecord) -> None:
        trace_id = record.trace_id
        string = self._string
        self._batches.append(
            _pack_batch(
                trace_id >> 64,
                trace_id & _MASK64,
                record.span_id,
                string(record.model),
                string(record.version),
                string(record.device),
                record.size,
                record.padded_size,
                record.request_count,
                record.instance,
                record.start_ns,
                record.input_end_ns,
                record.infer_end_ns,
                record.end_ns,
                len(record.links),
            )
        )
        append = self._links.append
        for link_trace, link_span in record.links:
            append(_pack_link(link_trace >> 64, link_trace & _MASK64, link_span))

    def take(self) -> PackedRecords:
        """The message; the packer is empty again."""
        packed = PackedRecords(
            tuple(self._index),
            b"".join(self._requests),
            b"".join(self._batches),
            b"".join(self._links),
            b"".join(self._request_ids),
            tuple(self._rare),
        )
        self._reset()
        return packed


_pack_request = _REQUEST_ROW.pack
_pack_batch = _BATCH_ROW.pack
_pack_link = _LINK_ROW.pack


def pack_records(records: Iterable[SpanRecord]) -> PackedRecords:
    """``records`` as one message."""
    packer = RecordPacker()
    for record in records:
        packer.add(record)
    return packer.take()


def request_rows(packed: PackedRecords) -> np.ndarray:
    """The request spans' rows (a read-only structured array over ``packed.requests``)."""
    return np.frombuffer(packed.requests, REQUEST_DTYPE)


def batch_rows(packed: PackedRecords) -> np.ndarray:
    """The batch spans' rows."""
    return np.frombuffer(packed.batches, BATCH_DTYPE)


def link_rows(packed: PackedRecords) -> np.ndarray:
    """Every batch span's links, in batch order: ``link_count`` rows per batch."""
    return np.frombuffer(packed.links, LINK_DTYPE)


def rare_records(packed: PackedRecords) -> list[SpanRecord]:
    """The records that travelled as tuples."""
    return [_RECORD_TYPES[len(fields)]._make(fields) for fields in packed.rare]


def _id(array: np.ndarray) -> int:
    return int.from_bytes(array.tobytes(), "big")


def request_record(
    packed: PackedRecords, rows: np.ndarray, row: int, request_id: str
) -> RequestSpanRecord:
    """Row ``row`` of ``rows`` (request rows of ``packed``) as a record."""
    r = rows[row]
    strings = packed.strings
    kind = int(r["parent_kind"])
    return RequestSpanRecord(
        _id(r["trace_id"]),
        _id(r["span_id"]),
        _id(r["parent_span_id"]),
        kind == 2,
        strings[r["method"]],
        strings[r["model"]],
        strings[r["version"]],
        request_id,
        *(int(r[name]) for name in RequestSpanRecord._fields[8:18]),
        "",
        "",
        (),
    )


def batch_record(
    packed: PackedRecords, rows: np.ndarray, row: int, links: np.ndarray
) -> BatchSpanRecord:
    """Row ``row`` of ``rows`` (batch rows of ``packed``) as a record; ``links`` its link rows."""
    r = rows[row]
    strings = packed.strings
    return BatchSpanRecord(
        _id(r["trace_id"]),
        _id(r["span_id"]),
        strings[r["model"]],
        strings[r["version"]],
        *(int(r[name]) for name in ("size", "padded_size", "request_count")),
        strings[r["device"]],
        int(r["instance"]),
        *(int(r[name]) for name in ("start_ns", "input_end_ns", "infer_end_ns", "end_ns")),
        tuple((_id(link["trace_id"]), _id(link["span_id"])) for link in links),
        "",
        "",
    )


def request_id_ends(rows: np.ndarray) -> np.ndarray:
    """Where each request row's id ends in ``request_ids`` (it starts ``request_id_size`` before)."""
    return np.cumsum(rows["request_id_size"], dtype=np.int64)


def link_ends(rows: np.ndarray) -> np.ndarray:
    """Where each batch row's links end in the link rows."""
    return np.cumsum(rows["link_count"], dtype=np.int64)


def unpack_records(packed: PackedRecords) -> list[SpanRecord]:
    """Every record of ``packed`` (request spans, batch spans, then the rare ones), one
    Python object each: for the exporters that take ReadableSpans."""
    records: list[SpanRecord] = []
    rows = request_rows(packed)
    ends = request_id_ends(rows)
    ids = packed.request_ids
    for row in range(len(rows)):
        end = int(ends[row])
        start = end - int(rows[row]["request_id_size"])
        records.append(request_record(packed, rows, row, ids[start:end].decode()))
    rows = batch_rows(packed)
    links = link_rows(packed)
    ends = link_ends(rows)
    for row in range(len(rows)):
        end = int(ends[row])
        records.append(
            batch_record(packed, rows, row, links[end - int(rows[row]["link_count"]) : end])
        )
    records += rare_records(packed)
    return records
