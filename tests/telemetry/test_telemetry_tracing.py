"""OpenTelemetry tracing through a real server: span tree, batch links, settings, sampling."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import numpy as np
import pytest
import tritonclient.grpc as triton
from opentelemetry.trace import SpanKind, StatusCode

from batchwire.clients import AsyncInferenceClient, InferenceClient
from batchwire.clients.errors import InferenceServerError
from batchwire.telemetry.trace_config import TraceConfig
from batchwire.telemetry.tracing import TraceSettingError, Tracing

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_ID = 0xB7AD6B7169203331


def traceparent(trace_id: int = TRACE_ID, parent: int = PARENT_ID, sampled: bool = True) -> str:
    return f"00-{trace_id:032x}-{parent:016x}-{'01' if sampled else '00'}"


def x(batch: int = 1) -> dict[str, np.ndarray]:
    return {"INPUT__0": np.random.default_rng(batch).standard_normal((batch, 64), dtype=np.float32)}


def in_trace(spans, trace_id: int):
    return [s for s in spans if s.context.trace_id == trace_id]


def test_server_span_is_a_child_of_the_callers_traceparent(telemetry_server, spans) -> None:
    trace_id = 0x1234 << 64 | 0x1
    before = time.time_ns()
    with InferenceClient(telemetry_server.address) as client:
        client.infer("mlp", x(3), request_id="r-1", headers={"traceparent": traceparent(trace_id)})
    after = time.time_ns()
    trace = in_trace(spans(), trace_id)
    (server,) = [s for s in trace if s.kind is SpanKind.SERVER]
    assert server.name == "ModelInfer"
    assert server.parent is not None and server.parent.span_id == PARENT_ID
    assert server.parent.is_remote
    assert server.status.status_code is StatusCode.UNSET
    attributes = dict(server.attributes)
    assert attributes["batchwire.model.name"] == "mlp"
    assert attributes["batchwire.model.version"] == "1"
    assert attributes["batchwire.request.id"] == "r-1"
    assert attributes["rpc.method"] == "ModelInfer" and attributes["rpc.grpc.status_code"] == 0
    assert attributes["batchwire.batch.size"] >= 3
    # One span per request: its phases are events on it, not child spans.
    assert [s for s in trace if s.parent and s.parent.span_id == server.context.span_id] == []
    names = [e.name for e in server.events]
    assert names == [
        "queue_start",
        "compute_start",
        "compute_input_end",
        "compute_output_start",
        "compute_end",
        "response_send",
    ]
    stamps = [e.timestamp for e in server.events]
    # Retroactive events on the wall clock: inside the call, in order, inside the span.
    slack = 50_000_000  # wall clock vs perf_counter drift since the server started
    assert before - slack <= server.start_time <= stamps[0]
    assert stamps == sorted(stamps)
    assert stamps[-1] <= server.end_time <= after + slack


async def test_batch_span_links_every_request_span_in_its_batch(telemetry_server, spans) -> None:
    trace_ids = [(0x5EED << 96) | i for i in range(1, 25)]
    async with AsyncInferenceClient(telemetry_server.address) as client:
        await asyncio.gather(
            *(
                client.infer("mlp_window", x(2), headers={"traceparent": traceparent(t)})
                for t in trace_ids
            )
        )
    every = await asyncio.to_thread(spans)  # spans() blocks until the export is done
    requests = {
        s.context.span_id: s
        for s in every
        if s.kind is SpanKind.SERVER and s.context.trace_id in trace_ids
    }
    assert len(requests) == len(trace_ids)
    batches = [
        s
        for s in every
        if s.name == "batch" and any(link.context.span_id in requests for link in s.links)
    ]
    linked = [link.context.span_id for b in batches for link in b.links]
    assert sorted(linked) == sorted(requests)  # every request in exactly one batch
    assert any(len(b.links) >= 2 for b in batches), "no batch held two traced requests"
    for batch in batches:
        attributes = dict(batch.attributes)
        assert attributes["batchwire.model.name"] == "mlp_window"
        assert attributes["batchwire.model.version"] == "1"
        assert attributes["batchwire.batch.request_count"] == len(batch.links)
        assert attributes["batchwire.batch.size"] == 2 * len(batch.links)
        assert attributes["batchwire.batch.padded_size"] >= attributes["batchwire.batch.size"]
        assert attributes["batchwire.device"] == "cpu"
        assert attributes["batchwire.instance"] == 0
        assert batch.status.status_code is StatusCode.UNSET
        for link in batch.links:
            request = requests[link.context.span_id]
            assert link.context.trace_id == request.context.trace_id
            assert (
                dict(request.attributes)["batchwire.batch.size"]
                == attributes["batchwire.batch.size"]
            )


def test_failed_batch_and_request_spans_have_error_status(telemetry_server, spans) -> None:
    trace_id = 0xBAD << 64 | 7
    with InferenceClient(telemetry_server.address) as client, pytest.raises(InferenceServerError):
        client.infer(
            "failing",
            {"X": np.array([[-1.0]], np.float32)},
            headers={"traceparent": traceparent(trace_id)},
        )
    every = spans()
    (server,) = [s for s in in_trace(every, trace_id) if s.kind is SpanKind.SERVER]
    assert server.status.status_code is StatusCode.ERROR
    assert "negative input" in server.status.description
    assert dict(server.attributes)["rpc.grpc.status_code"] == 13  # INTERNAL
    (batch,) = [
        s
        for s in every
        if s.name == "batch"
        and [link.context.span_id for link in s.links] == [server.context.span_id]
    ]
    assert batch.status.status_code is StatusCode.ERROR


def test_stream_requests_get_one_span_each(telemetry_server, spans) -> None:
    trace_id = 0x57 << 64 | 0x9
    with InferenceClient(telemetry_server.address) as client:
        results = list(
            client.stream_infer(
                "mlp", [x(1) for _ in range(4)], headers={"traceparent": traceparent(trace_id)}
            )
        )
    assert len(results) == 4
    servers = [s for s in in_trace(spans(), trace_id) if s.kind is SpanKind.SERVER]
    assert len(servers) == 4
    assert {s.name for s in servers} == {"ModelStreamInfer"}
    assert {s.parent.span_id for s in servers} == {PARENT_ID}
    assert len({s.context.span_id for s in servers}) == 4


def test_unsampled_parent_and_per_model_off_are_not_traced(telemetry_server, spans) -> None:
    tclient = triton.InferenceServerClient(telemetry_server.address)
    unsampled, off = 0xA1 << 64 | 1, 0xA2 << 64 | 1
    try:
        with InferenceClient(telemetry_server.address) as client:
            client.infer("mlp", x(), headers={"traceparent": traceparent(unsampled, sampled=False)})
            tclient.update_trace_settings("mlp", {"trace_level": ["OFF"]})
            client.infer("mlp", x(), headers={"traceparent": traceparent(off)})
            # Clearing the model's setting restores the global one (TIMESTAMPS).
            tclient.update_trace_settings("mlp", {"trace_level": None})
            assert tclient.get_trace_settings("mlp", as_json=True)["settings"]["trace_level"][
                "value"
            ] == ["TIMESTAMPS"]
            client.infer("mlp", x(), headers={"traceparent": traceparent(off + 1)})
    finally:
        tclient.update_trace_settings("mlp", {"trace_level": None})
        tclient.close()
    every = spans()
    assert not in_trace(every, unsampled)
    assert not in_trace(every, off)
    assert in_trace(every, off + 1)


def test_trace_settings_round_trip_through_tritonclient(telemetry_server) -> None:
    client = triton.InferenceServerClient(telemetry_server.address)

    def values(settings: dict) -> dict[str, list[str]]:
        return {k: v.get("value", []) for k, v in settings["settings"].items()}

    try:
        initial = values(client.get_trace_settings(as_json=True))
        assert initial["trace_level"] == ["TIMESTAMPS"] and initial["trace_rate"] == ["1"]
        assert {"trace_count", "log_frequency", "trace_file"} <= set(initial)
        updated = values(
            client.update_trace_settings(
                settings={"trace_rate": "10", "log_frequency": "5", "trace_file": "/tmp/t.json"},
                as_json=True,
            )
        )
        assert updated["trace_rate"] == ["10"] and updated["log_frequency"] == ["5"]
        assert updated["trace_file"] == ["/tmp/t.json"]
        model = values(
            client.update_trace_settings(
                model_name="text",
                settings={"trace_level": ["TIMESTAMPS", "TENSORS"], "trace_rate": "2"},
                as_json=True,
            )
        )
        assert model["trace_level"] == ["TIMESTAMPS", "TENSORS"] and model["trace_rate"] == ["2"]
        assert model["log_frequency"] == ["5"]  # inherited from the global settings
        cleared = values(
            client.update_trace_settings(
                model_name="text", settings={"trace_rate": None}, as_json=True
            )
        )
        assert cleared["trace_rate"] == ["10"]
        for bad in ({"trace_level": ["LOUD"]}, {"trace_rate": "often"}, {"no_such_key": "1"}):
            with pytest.raises(triton.InferenceServerException) as info:
                client.update_trace_settings(settings=bad)
            assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        with pytest.raises(triton.InferenceServerException) as info:
            client.get_trace_settings("no-such-model")
        assert info.value.status() == "StatusCode.NOT_FOUND"
    finally:
        client.update_trace_settings(
            model_name="text", settings={"trace_level": None, "trace_rate": None}
        )
        client.update_trace_settings(
            settings={"trace_rate": None, "log_frequency": None, "trace_file": None}
        )
        restored = values(client.get_trace_settings(as_json=True))
        client.close()
    assert restored == initial


def test_tensors_level_records_input_shapes(telemetry_server, spans) -> None:
    client = triton.InferenceServerClient(telemetry_server.address)
    trace_id = 0x7E << 64 | 3
    try:
        client.update_trace_settings("mlp", {"trace_level": ["TIMESTAMPS", "TENSORS"]})
        with InferenceClient(telemetry_server.address) as ours:
            ours.infer("mlp", x(2), headers={"traceparent": traceparent(trace_id)})
    finally:
        client.update_trace_settings("mlp", {"trace_level": None})
        client.close()
    (server,) = [s for s in in_trace(spans(), trace_id) if s.kind is SpanKind.SERVER]
    assert tuple(server.attributes["batchwire.input.INPUT__0.shape"]) == (2, 64)
    assert server.attributes["batchwire.input.INPUT__0.dtype"] == "float32"


# -- sampling and configuration, without a server ----------------------------------------


def test_ratio_sampling_and_trace_count() -> None:
    tracing = Tracing(TraceConfig(mode="ratio", rate=0.25, exporter="none"))
    try:
        assert tracing.armed
        taken = sum(tracing.start("m", None, "ModelInfer") is not None for _ in range(8000))
        assert 0.21 < taken / 8000 < 0.29
        parent = tracing.start("m", None, "x")
        while parent is None:
            parent = tracing.start("m", None, "x")
        # A sampled parent is always followed, whatever the ratio.
        assert all(tracing.start("m", parent.context, "x") is not None for _ in range(100))
        tracing.update_settings("", {"trace_rate": ["1"], "trace_count": ["3"]})
        assert [tracing.start("m", None, "x") is not None for _ in range(5)] == [True] * 3 + [
            False
        ] * 2
        assert tracing.get_settings()["trace_count"] == ["0"]
        tracing.update_settings("", {"trace_level": ["OFF"]})
        assert not tracing.armed
        assert tracing.start("m", parent.context, "x") is None
        with pytest.raises(TraceSettingError):
            tracing.update_settings("", {"trace_count": ["-5"]})
    finally:
        tracing.shutdown(1.0)


def test_trace_config_honours_otel_environment_and_flags_win() -> None:
    env = {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.5",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "edge-inference",
    }
    config = TraceConfig.resolve(environ=env)
    assert (config.mode, config.rate, config.exporter, config.service_name) == (
        "ratio",
        0.5,
        "otlp-http",
        "edge-inference",
    )
    flags = TraceConfig.resolve(mode="always", exporter="console", environ=env)
    assert (flags.mode, flags.exporter) == ("always", "console")
    assert TraceConfig.resolve(environ={}).mode == "off"
    assert TraceConfig.resolve(mode="ratio", environ={}).rate == 0.1
    assert TraceConfig.resolve(environ={"OTEL_TRACES_SAMPLER": "always_on"}).mode == "always"
    assert TraceConfig.resolve(environ={"OTEL_TRACES_SAMPLER": "always_off"}).mode == "off"
    disabled = {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_SAMPLER": "always_on"}
    assert TraceConfig.resolve(environ=disabled).mode == "off"
    assert TraceConfig.resolve(environ={"OTEL_TRACES_EXPORTER": "console"}).exporter == "console"


def test_console_exporter_prints_the_spans_from_the_exporter_process(
    examples_repository, capfd
) -> None:
    """The console exporter runs in the exporter process, whose stdout is the server's."""
    from testsupport import start_server

    server = start_server(examples_repository, trace_mode="always", trace_exporter="console")
    try:
        with InferenceClient(server.address) as client:
            client.infer("mlp", x(), headers={"traceparent": traceparent(0xC0 << 64 | 1)})
        assert server.server.telemetry.tracing.flush()
    finally:
        server.stop()
    printed = capfd.readouterr().out
    assert '"name": "ModelInfer"' in printed and '"name": "batch"' in printed
    assert f'"trace_id": "0x{0xC0 << 64 | 1:032x}"' in printed


def test_tracing_off_builds_nothing(examples_repository) -> None:
    from testsupport import start_server

    server = start_server(examples_repository, trace_mode="off")
    try:
        tracing = server.server.telemetry.tracing
        assert not tracing.armed and not tracing.exporting
        with InferenceClient(server.address) as client:
            client.infer("mlp", x(), headers={"traceparent": traceparent()})
    finally:
        server.stop()


def test_unreachable_collector_loses_spans_not_requests(
    examples_repository, monkeypatch, capfd
) -> None:
    from testsupport import free_port, start_server

    closed = free_port()  # nothing listens there
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # export (and fail) while requests run
    server = start_server(
        examples_repository,
        trace_mode="always",
        trace_exporter="otlp-grpc",
        trace_endpoint=f"127.0.0.1:{closed}",
    )
    try:
        started = time.perf_counter()

        def one(i: int) -> None:
            with InferenceClient(server.address, timeout=5) as client:
                for _ in range(10):
                    client.infer("mlp", x(), headers={"traceparent": traceparent(i + 1)})

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(one, range(4)))
            time.sleep(0.2)
            list(pool.map(one, range(4)))
        elapsed = time.perf_counter() - started
        assert elapsed < 10, f"80 requests took {elapsed:.1f} s with the collector down"
        # The exporter process logs its failures on the server's stderr.
        logged = ""
        give_up = time.monotonic() + 15
        while "UNAVAILABLE" not in logged and time.monotonic() < give_up:
            time.sleep(0.2)
            logged += capfd.readouterr().err
        assert "UNAVAILABLE" in logged, "the exporter never tried the closed port"
    finally:
        stopping = time.perf_counter()
        server.stop(grace=1.0)
        assert time.perf_counter() - stopping < 10
