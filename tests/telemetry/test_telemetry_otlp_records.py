"""The exporter process's direct OTLP encoding says what the SDK's encoding says."""

from __future__ import annotations

import random

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from testsupport import request_span_record as request

from batchwire.telemetry.otlp_records import OtlpRecordEncoder
from batchwire.telemetry.span_export import span_builder
from batchwire.telemetry.span_records import BatchSpanRecord, RequestSpanRecord

OFFSET = 1_700_000_000_000_000_000


RECORDS = [
    request(),
    # Failed in the queue: no batch, no response sent, no parent, no version.
    request(
        span_id=2,
        parent_span_id=0,
        parent_remote=False,
        version="",
        request_id="",
        batch_size=0,
        send_ns=0,
        grpc_status=14,
        error_type="QueueFullError",
        error_message="queue full",
    ),
    request(span_id=3, method="ModelStreamInfer", tensors=(("INPUT__0", (1, 64), "float32"),)),
    BatchSpanRecord(
        trace_id=7,
        span_id=8,
        model="mlp",
        version="1",
        size=8,
        padded_size=10,
        request_count=2,
        device="cpu",
        instance=0,
        start_ns=300,
        input_end_ns=350,
        infer_end_ns=600,
        end_ns=650,
        links=((0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331), (5, 6)),
        error_type="",
        error_message="",
    ),
    BatchSpanRecord(7, 9, "mlp", "1", 1, 1, 1, "cuda:0", 1, 1, 2, 3, 4, ((5, 6),), "E", "boom"),
]


def value(any_value: AnyValue) -> object:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind)


def attributes(repeated) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {kv.key: value(kv.value) for kv in repeated}


def normalized(request: ExportTraceServiceRequest) -> dict:
    """The request's fields, spans in order of their ids (OTLP gives order no meaning,
    and the direct encoding groups spans by shape)."""
    (resource_spans,) = request.resource_spans
    (scope_spans,) = resource_spans.scope_spans
    spans = []
    for span in scope_spans.spans:
        spans.append(
            {
                "ids": (span.trace_id, span.span_id, span.parent_span_id, span.flags),
                "name": span.name,
                "kind": span.kind,
                "times": (span.start_time_unix_nano, span.end_time_unix_nano),
                "attributes": attributes(span.attributes),
                "events": [
                    (e.name, e.time_unix_nano, attributes(e.attributes)) for e in span.events
                ],
                "links": [(link.trace_id, link.span_id, link.flags) for link in span.links],
                "status": (span.status.code, span.status.message),
            }
        )
    spans.sort(key=lambda span: (span["ids"], span["links"]))
    return {
        "resource": attributes(resource_spans.resource.attributes),
        "scope": (scope_spans.scope.name, scope_spans.scope.version),
        "spans": spans,
    }


def test_direct_encoding_matches_the_sdk_encoding_field_by_field() -> None:
    builder = span_builder("batchwire-test", OFFSET)
    sdk = encode_spans(list(builder.build(RECORDS)))
    ours = OtlpRecordEncoder(builder.resource, builder.scope, OFFSET).encode(RECORDS)
    expected, got = normalized(sdk), normalized(ours)
    assert got["resource"] == expected["resource"]
    assert got["resource"]["service.name"] == "batchwire-test"
    assert got["scope"] == expected["scope"]
    assert len(got["spans"]) == len(RECORDS)
    for mine, theirs in zip(got["spans"], expected["spans"], strict=True):
        assert mine == theirs
    # The fields the comparison rests on are really there.
    by_id = {int.from_bytes(span["ids"][1], "big"): span for span in got["spans"]}
    first, failed, batch, failed_batch = (by_id[i] for i in (0xB7AD6B7169203331, 2, 8, 9))
    assert first["times"] == (OFFSET + 100, OFFSET + 900)
    assert [name for name, _, _ in first["events"]][-1] == "response_send"
    assert [name for name, _, _ in failed["events"]] == ["queue_start", "queue_end"]
    assert failed["status"] == (2, "queue full")  # STATUS_CODE_ERROR
    assert len(batch["links"]) == 2
    assert failed_batch["attributes"]["error.type"] == "E"


def test_the_encoded_request_round_trips_through_protobuf() -> None:
    builder = span_builder("batchwire-test", OFFSET)
    encoded = OtlpRecordEncoder(builder.resource, builder.scope, OFFSET).encode(RECORDS)
    parsed = ExportTraceServiceRequest.FromString(encoded.SerializeToString())
    assert normalized(parsed) == normalized(encoded)


def test_spans_of_one_shape_share_nothing_but_their_shape() -> None:
    """Spans of a repeated shape are copies of a cached layout: ids, parents and
    times must still be each record's own, exactly as the SDK encodes them."""
    records: list[RequestSpanRecord | BatchSpanRecord] = []
    for i in range(1, 5):
        records.append(
            request(
                trace_id=1000 + i,
                span_id=2000 + i,
                parent_span_id=0 if i % 2 else 3000 + i,
                parent_remote=bool(i % 3),
                request_id="",
                start_ns=10 * i,
                end_ns=10 * i + 9,
                received_ns=10 * i + 1,
                queued_ns=10 * i + 2,
                input_end_ns=10 * i + 3,
                infer_end_ns=10 * i + 4,
                output_end_ns=10 * i + 5,
                send_ns=10 * i + 6,
            )
        )
        records.append(
            BatchSpanRecord(
                9, 4000 + i, "mlp", "1", 4, 4, 1, "cpu", 0, 10 * i, 10 * i + 3, 10 * i + 4,
                10 * i + 5, ((1000 + i, 2000 + i),), "", "",
            )
        )  # fmt: skip
    builder = span_builder("batchwire-test", OFFSET)
    sdk = normalized(encode_spans(list(builder.build(records))))
    encoder = OtlpRecordEncoder(builder.resource, builder.scope, OFFSET)
    for _ in range(2):  # the second pass reuses every layout
        ours = normalized(encoder.encode(records))
        assert ours == sdk
    spans = ours["spans"]
    assert len({span["ids"] for span in spans}) == len(records)
    # The batches (trace 9) sort first, then the requests (traces 1001-1004).
    assert [len(span["links"]) for span in spans] == [1, 1, 1, 1, 0, 0, 0, 0]
    assert spans[5]["times"] == (OFFSET + 20, OFFSET + 29)
    assert spans[5]["events"][-1] == ("response_send", OFFSET + 26, {})


def test_batch_spans_of_one_batch_shape_keep_each_its_own_links() -> None:
    """Batches of one shape may link different numbers of traced requests (ratio
    sampling traces some of a batch's requests): each span keeps exactly its links."""
    records = [
        BatchSpanRecord(
            9, 500 + count, "mlp", "1", 4, 4, 4, "cpu", 0, 10, 11, 12, 13,
            tuple((600 + count * 10 + i, 700 + count * 10 + i) for i in range(count)), "", "",
        )
        for count in (1, 3, 0, 3, 1)
    ]  # fmt: skip
    builder = span_builder("batchwire-test", OFFSET)
    sdk = normalized(encode_spans(list(builder.build(records))))
    encoder = OtlpRecordEncoder(builder.resource, builder.scope, OFFSET)
    for _ in range(2):
        assert normalized(encoder.encode(records)) == sdk
    links = {int.from_bytes(span["ids"][1], "big"): span["links"] for span in sdk["spans"]}
    assert {span: len(span_links) for span, span_links in links.items()} == {
        500: 0,
        501: 1,
        503: 3,
    }
    assert links[503][2][:2] == ((632).to_bytes(16, "big"), (732).to_bytes(8, "big"))


def test_an_empty_export_is_a_valid_request() -> None:
    builder = span_builder("batchwire-test", OFFSET)
    encoded = OtlpRecordEncoder(builder.resource, builder.scope, OFFSET).encode([])
    (resource_spans,) = encoded.resource_spans
    (scope_spans,) = resource_spans.scope_spans
    assert len(scope_spans.spans) == 0
    assert scope_spans.scope.name == "batchwire"


def test_request_ids_of_any_size_are_each_spans_own() -> None:
    """Streams tag every request with an id: spans whose ids share a size in bytes share
    a layout, and each still carries its own id (non-ASCII ids count their bytes)."""
    ids = ["0", "1", "17", "42", "req-0007", "req-0008", "é", "ab", "0"]
    records = [
        request(
            trace_id=5000 + i,
            span_id=6000 + i,
            parent_span_id=0,
            parent_remote=False,
            request_id=request_id,
            method="ModelStreamInfer",
            start_ns=10 * i,
            end_ns=10 * i + 9,
        )
        for i, request_id in enumerate(ids)
    ]
    builder = span_builder("batchwire-test", OFFSET)
    sdk = normalized(encode_spans(list(builder.build(records))))
    encoder = OtlpRecordEncoder(builder.resource, builder.scope, OFFSET)
    for _ in range(2):
        assert normalized(encoder.encode(records)) == sdk
    assert [span["attributes"]["batchwire.request.id"] for span in sdk["spans"]] == ids


def test_a_large_message_of_many_shapes_matches_the_sdk_encoding() -> None:
    """Hundreds of spans of dozens of shapes in one message, as a busy server sends
    them: every group of one shape is filled at once, and every span must still be
    exactly its own."""
    rng = random.Random(7)
    records: list[RequestSpanRecord | BatchSpanRecord] = []
    for n in range(120):
        size = rng.choice([1, 2, 3, 7, 32])
        links = []
        for _ in range(rng.choice([0, 1, size])):
            trace_id, span_id = rng.getrandbits(128) or 1, rng.getrandbits(64) or 1
            links.append((trace_id, span_id))
            start = rng.randrange(1, 1 << 40)
            parent = rng.choice([0, rng.getrandbits(64) or 1])
            records.append(
                request(
                    trace_id=trace_id,
                    span_id=span_id,
                    parent_span_id=parent,
                    parent_remote=bool(parent) and rng.random() < 0.5,
                    method=rng.choice(["ModelInfer", "ModelStreamInfer"]),
                    model=rng.choice(["mlp", "cnn"]),
                    version=rng.choice(["1", "", "12"]),
                    request_id=rng.choice(["", "7", "42", f"req-{n:04d}", "\u00e9"]),
                    batch_size=size,
                    start_ns=start,
                    end_ns=start + 900,
                    received_ns=start + 1,
                    queued_ns=start + 2,
                    input_end_ns=start + 3,
                    infer_end_ns=start + 4,
                    output_end_ns=start + 5,
                    send_ns=rng.choice([0, start + 6]),
                )
            )
        start = rng.randrange(1, 1 << 40)
        records.append(
            BatchSpanRecord(
                rng.getrandbits(128) or 1, rng.getrandbits(64) or 1, "mlp", "1", size,
                size + rng.choice([0, 1]), len(links), rng.choice(["cpu", "cuda:0"]),
                rng.choice([0, 1]), start, start + 1, start + 2, start + 3, tuple(links), "", "",
            )
        )  # fmt: skip
    rng.shuffle(records)
    assert len(records) > 300
    builder = span_builder("batchwire-test", OFFSET)
    sdk = normalized(encode_spans(list(builder.build(records))))
    encoder = OtlpRecordEncoder(builder.resource, builder.scope, OFFSET)
    for _ in range(2):  # the second pass reuses every layout
        assert normalized(encoder.encode(records)) == sdk
    assert len(sdk["spans"]) == len(records)
