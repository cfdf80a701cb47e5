"""Span records packed into rows for the exporter process come back exactly as they went."""

from __future__ import annotations

from testsupport import request_span_record as request

from batchwire.telemetry.record_wire import RecordPacker, pack_records, unpack_records
from batchwire.telemetry.span_records import BatchSpanRecord

BIGGEST_TRACE = (1 << 128) - 1
BIGGEST_SPAN = (1 << 64) - 1


def batch(span_id: int, links: tuple[tuple[int, int], ...], **changes: object) -> BatchSpanRecord:
    fields = {
        "trace_id": 0x5B8EFFF798038103D269B633813FC60C,
        "span_id": span_id,
        "model": "mlp",
        "version": "1",
        "size": 8,
        "padded_size": 10,
        "request_count": len(links),
        "device": "cpu",
        "instance": 0,
        "start_ns": 300,
        "input_end_ns": 350,
        "infer_end_ns": 600,
        "end_ns": 650,
        "links": links,
        "error_type": "",
        "error_message": "",
    }
    fields.update(changes)
    return BatchSpanRecord(**fields)  # type: ignore[arg-type]


PLAIN_REQUESTS = [
    request(),  # a remote parent, request id "r-1"
    request(span_id=2, parent_remote=False),  # a parent in this process
    request(span_id=3, parent_span_id=0, parent_remote=False, request_id=""),
    request(span_id=4, request_id="\u00e9t\u00e9-\u2603", method="ModelStreamInfer"),
    request(trace_id=BIGGEST_TRACE, span_id=BIGGEST_SPAN, parent_span_id=BIGGEST_SPAN),
    # Timed out in the queue: no batch, no compute phases, nothing sent.
    request(span_id=6, batch_size=0, input_end_ns=0, infer_end_ns=0, output_end_ns=0, send_ns=0),
    request(span_id=7, model="text", version="", grpc_status=4, batch_size=32),
]
PLAIN_BATCHES = [
    batch(20, ()),
    batch(21, ((BIGGEST_TRACE, BIGGEST_SPAN),)),
    batch(22, tuple((1000 + i, 2000 + i) for i in range(5)), device="cuda:1", instance=3),
]
RARE = [
    request(span_id=8, grpc_status=14, error_type="QueueFullError", error_message="full"),
    request(span_id=9, tensors=(("INPUT__0", (1, 64), "float32"), ("MASK", (1, 3), "bool"))),
    batch(23, ((7, 8),), error_type="ModelError", error_message="boom"),
]


def test_records_come_back_field_for_field() -> None:
    records = [
        PLAIN_REQUESTS[0],
        PLAIN_BATCHES[0],
        RARE[0],
        *PLAIN_REQUESTS[1:],
        *RARE[1:],
        *PLAIN_BATCHES[1:],
    ]
    packed = pack_records(records)
    assert packed.count == len(records)
    # Requests, then batches, then the rare records that travelled as tuples.
    assert unpack_records(packed) == [*PLAIN_REQUESTS, *PLAIN_BATCHES, *RARE]
    assert len(packed.rare) == len(RARE)


def test_each_message_carries_its_own_strings() -> None:
    packer = RecordPacker()
    for record in PLAIN_REQUESTS[:2]:
        packer.add(record)
    first = packer.take()
    assert sorted(first.strings) == ["1", "ModelInfer", "mlp"]
    assert packer.count == 0
    packer.add(PLAIN_REQUESTS[6])  # model "text", no version
    packer.add(PLAIN_BATCHES[2])  # device "cuda:1"
    second = packer.take()
    assert sorted(second.strings) == ["", "1", "ModelInfer", "cuda:1", "mlp", "text"]
    # Each decodes on its own, whatever was packed before or after it.
    assert unpack_records(second) == [PLAIN_REQUESTS[6], PLAIN_BATCHES[2]]
    assert unpack_records(first) == PLAIN_REQUESTS[:2]


def test_an_empty_message_holds_nothing() -> None:
    packed = RecordPacker().take()
    assert packed.count == 0
    assert unpack_records(packed) == []
