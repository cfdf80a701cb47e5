"""The exporter process's OTLP encoding says, field for field, what the SDK's says.

The reference is the SDK's public encoder (``encode_spans`` of
opentelemetry-exporter-otlp-proto-common) applied to the SDK spans that
:class:`~batchwire.telemetry.sdk_spans.SpanBuilder` builds from the same records.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from testsupport import request_span_record as request

from batchwire.telemetry.otlp_encoding import OtlpEncoder, _any_value, set_value
from batchwire.telemetry.sdk_spans import SpanBuilder
from batchwire.telemetry.span_records import BatchSpanRecord, SpanRecord

OFFSET = 1_700_000_000_000_000_000


def batch(**changes: object) -> BatchSpanRecord:
    """A batch span record with plausible fields, ``changes`` applied."""
    fields: dict[str, Any] = {
        "trace_id": 7,
        "span_id": 8,
        "model": "mlp",
        "version": "1",
        "size": 8,
        "padded_size": 10,
        "request_count": 2,
        "device": "cpu",
        "instance": 0,
        "start_ns": 300,
        "input_end_ns": 350,
        "infer_end_ns": 600,
        "end_ns": 650,
        "links": ((0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331), (5, 6)),
        "error_type": "",
        "error_message": "",
    }
    fields.update(changes)
    return BatchSpanRecord(**fields)


RECORDS: list[SpanRecord] = [
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
    # A local parent, a non-ASCII request id.
    request(span_id=4, parent_remote=False, request_id="\u00e9t\u00e9-\u2603"),
    batch(),
    batch(
        span_id=9,
        size=1,
        padded_size=1,
        request_count=1,
        device="cuda:0",
        instance=1,
        links=((5, 6),),
        error_type="E",
        error_message="boom",
    ),
    batch(span_id=10, links=()),
    # The largest ids there are.
    request(trace_id=(1 << 128) - 1, span_id=(1 << 64) - 1, parent_span_id=(1 << 64) - 1),
]


def encoders(records: list[SpanRecord]) -> tuple[OtlpEncoder, ExportTraceServiceRequest]:
    """Ours for the service ``batchwire-test``, and the SDK's encoding of ``records``."""
    builder = SpanBuilder("batchwire-test", OFFSET)
    ours = OtlpEncoder(
        builder.resource.attributes, builder.scope.name, builder.scope.version or "", OFFSET
    )
    return ours, encode_spans(builder.build(records))


def encoded(encoder: OtlpEncoder, records: list[SpanRecord]) -> ExportTraceServiceRequest:
    """What the exporter sends: the serialized request, parsed back."""
    return ExportTraceServiceRequest.FromString(encoder.encode(records))


def value(any_value: AnyValue) -> object:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind)


def attributes(repeated: Iterable[KeyValue]) -> dict[str, object]:
    return {kv.key: value(kv.value) for kv in repeated}


def normalized(request: ExportTraceServiceRequest) -> dict:
    """The request's fields, spans in order of their ids (OTLP gives order no meaning)."""
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


def test_encoding_matches_the_sdk_encoding_field_by_field() -> None:
    encoder, sdk = encoders(RECORDS)
    expected, got = normalized(sdk), normalized(encoded(encoder, RECORDS))
    assert got["resource"] == expected["resource"]
    assert got["resource"]["service.name"] == "batchwire-test"
    assert got["scope"] == expected["scope"]
    assert len(got["spans"]) == len(RECORDS)
    for mine, theirs in zip(got["spans"], expected["spans"], strict=True):
        assert mine == theirs
    # The fields the comparison rests on are really there.
    by_id = {int.from_bytes(span["ids"][1], "big"): span for span in got["spans"]}
    first, failed, tensors, batch_span, failed_batch = (
        by_id[i] for i in (0xB7AD6B7169203331, 2, 3, 8, 9)
    )
    assert first["times"] == (OFFSET + 100, OFFSET + 900)
    assert first["ids"][3] == 0x300  # the parent is remote
    assert by_id[4]["ids"][3] == 0x100  # the parent is local
    assert [name for name, _, _ in first["events"]] == [
        "queue_start",
        "compute_start",
        "compute_input_end",
        "compute_output_start",
        "compute_end",
        "response_send",
    ]
    assert first["attributes"]["batchwire.request.id"] == "r-1"
    assert [name for name, _, _ in failed["events"]] == ["queue_start", "queue_end"]
    assert failed["status"] == (2, "queue full")  # STATUS_CODE_ERROR
    assert "batchwire.model.version" not in failed["attributes"]
    assert tensors["attributes"]["batchwire.input.INPUT__0.shape"] == [1, 64]
    assert len(batch_span["links"]) == 2 and batch_span["kind"] == 1  # INTERNAL
    assert failed_batch["attributes"]["error.type"] == "E"
    assert by_id[10]["links"] == []


def test_spans_keep_each_their_own_ids_and_times() -> None:
    """Spans that differ only in ids, parents and times: each keeps its own, exactly
    as the SDK encodes them, however often the encoder has run."""
    records: list[SpanRecord] = []
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
            batch(
                trace_id=9,
                span_id=4000 + i,
                start_ns=10 * i,
                input_end_ns=10 * i + 3,
                infer_end_ns=10 * i + 4,
                end_ns=10 * i + 5,
                links=((1000 + i, 2000 + i),),
            )
        )
    encoder, sdk = encoders(records)
    for _ in range(2):
        ours = normalized(encoded(encoder, records))
        assert ours == normalized(sdk)
    spans = ours["spans"]
    assert len({span["ids"] for span in spans}) == len(records)
    # The batches (trace 9) sort first, then the requests (traces 1001-1004).
    assert [len(span["links"]) for span in spans] == [1, 1, 1, 1, 0, 0, 0, 0]
    assert spans[5]["times"] == (OFFSET + 20, OFFSET + 29)
    assert spans[5]["events"][-1] == ("response_send", OFFSET + 26, {})


def test_an_empty_export_is_a_valid_request() -> None:
    encoder, _ = encoders([])
    (resource_spans,) = encoded(encoder, []).resource_spans
    (scope_spans,) = resource_spans.scope_spans
    assert len(scope_spans.spans) == 0
    assert scope_spans.scope.name == "batchwire"


def test_a_large_export_of_varied_spans_matches_the_sdk_encoding() -> None:
    """Hundreds of spans of every kind in one export, as a busy server sends them."""
    rng = random.Random(7)
    records: list[SpanRecord] = []
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
            batch(
                trace_id=rng.getrandbits(128) or 1,
                span_id=rng.getrandbits(64) or 1,
                size=size,
                padded_size=size + rng.choice([0, 1]),
                request_count=len(links),
                device=rng.choice(["cpu", "cuda:0"]),
                instance=rng.choice([0, 1]),
                start_ns=start,
                input_end_ns=start + 1,
                infer_end_ns=start + 2,
                end_ns=start + 3,
                links=tuple(links),
            )
        )
    rng.shuffle(records)
    assert len(records) > 300
    encoder, sdk = encoders(records)
    assert normalized(encoded(encoder, records)) == normalized(sdk)
    assert len(sdk.resource_spans[0].scope_spans[0].spans) == len(records)


def test_every_attribute_value_kind_encodes_as_the_messages_do() -> None:
    """The wire writer against ``set_value`` on the messages, kind by kind."""
    for sample in (
        "",
        "é☃",
        True,
        False,
        0,
        1,
        -1,
        (1 << 63) - 1,
        -(1 << 63),
        0.5,
        -2.0,
        [3, 64],
        [],
    ):
        expected = AnyValue()
        set_value(expected, sample)
        assert AnyValue.FromString(_any_value(sample)) == expected, sample


def test_reused_attributes_keep_their_type() -> None:
    """``True == 1`` in a dict: the cache of encoded attributes must not mix them up."""
    encoder = OtlpEncoder({"service.name": "t"}, "batchwire", "0", 0)
    records = [
        request(span_id=11, request_id="1"),
        request(span_id=12, batch_size=1),
        request(span_id=13, request_id="1"),
    ]
    spans = {
        int.from_bytes(s.span_id, "big"): attributes(s.attributes)
        for s in encoded(encoder, records).resource_spans[0].scope_spans[0].spans
    }
    assert spans[11]["batchwire.request.id"] == "1" == spans[13]["batchwire.request.id"]
    assert spans[12]["batchwire.batch.size"] == 1
