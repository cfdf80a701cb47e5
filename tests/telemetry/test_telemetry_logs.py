"""LogSettings through tritonclient, JSON logs with trace ids, the serve command's flags."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator

import pytest
import tritonclient.grpc as triton
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from typer.testing import CliRunner

from batchwire.telemetry.logs import TextFormatter, make_handler


@contextlib.contextmanager
def captured(name: str, log_format: str) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing only to a StringIO through batchwire's handler."""
    stream = io.StringIO()
    handler = make_handler(log_format, stream)
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


@pytest.fixture()
def restore_batchwire_logger():
    logger = logging.getLogger("batchwire")
    level = logger.level
    yield logger
    logger.setLevel(level)


def test_log_settings_round_trip_through_tritonclient(
    telemetry_server, restore_batchwire_logger
) -> None:
    logger = restore_batchwire_logger
    client = triton.InferenceServerClient(telemetry_server.address)
    try:
        initial = client.get_log_settings(as_json=True)["settings"]
        assert set(initial) == {
            "log_file",
            "log_info",
            "log_warning",
            "log_error",
            "log_verbose_level",
            "log_format",
        }
        updated = client.update_log_settings({"log_verbose_level": 2}, as_json=True)["settings"]
        assert updated["log_verbose_level"]["uint32_param"] == 2
        assert logger.getEffectiveLevel() == logging.DEBUG
        quiet = client.update_log_settings(
            {"log_verbose_level": 0, "log_info": False, "log_warning": False}, as_json=True
        )["settings"]
        assert quiet["log_info"].get("bool_param", False) is False
        assert logger.getEffectiveLevel() == logging.ERROR
        client.update_log_settings({"log_info": True})
        assert logger.getEffectiveLevel() == logging.INFO
        formatted = client.update_log_settings({"log_format": "ISO8601"}, as_json=True)
        assert formatted["settings"]["log_format"]["string_param"] == "ISO8601"
        for bad in ({"log_file": "/tmp/server.log"}, {"log_format": "fancy"}):
            with pytest.raises(triton.InferenceServerException) as info:
                client.update_log_settings(bad)
            assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert client.get_log_settings(as_json=True)["settings"]["log_format"]["string_param"] == (
            "ISO8601"
        )
    finally:
        client.update_log_settings({"log_format": "default", "log_verbose_level": 0})
        client.close()


def test_iso8601_timestamps_follow_log_format(telemetry_server) -> None:
    from batchwire.telemetry.logs import LogControl

    formatter = TextFormatter()
    record = logging.LogRecord("batchwire.x", logging.INFO, __file__, 1, "hello", None, None)
    control = LogControl()
    try:
        control.update({"log_format": "ISO8601"})
        assert formatter.formatTime(record).endswith("Z") and "T" in formatter.formatTime(record)
    finally:
        control.update({"log_format": "default"})
    assert "T" not in formatter.formatTime(record)


def test_json_logs_carry_trace_and_span_ids_inside_a_span() -> None:
    context = SpanContext(0xABC, 0xDEF, False, TraceFlags(TraceFlags.SAMPLED))
    with captured("batchwire.test.json", "json") as (logger, stream):
        with trace.use_span(NonRecordingSpan(context)):
            logger.info("inside %s", "a span")
        logger.warning("outside")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    inside, outside, failed = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["message"] == "inside a span" and inside["level"] == "INFO"
    assert inside["trace_id"] == f"{0xABC:032x}" and inside["span_id"] == f"{0xDEF:016x}"
    assert inside["logger"] == "batchwire.test.json" and inside["timestamp"].endswith("Z")
    assert "trace_id" not in outside
    assert "ValueError: boom" in failed["exception"]


def test_logs_inside_a_traced_request_carry_its_ids() -> None:
    from batchwire.telemetry.tracing import ACTIVE_REQUEST

    outer = SpanContext(0x111, 0x222, False, TraceFlags(TraceFlags.SAMPLED))
    with (
        captured("batchwire.test.request", "json") as (logger, stream),
        trace.use_span(NonRecordingSpan(outer)),
    ):
        token = ACTIVE_REQUEST.set((0xAAA, 0xBBB))
        try:
            logger.info("serving")  # the request the task serves wins
        finally:
            ACTIVE_REQUEST.reset(token)
        logger.info("after")  # back to the enclosing OpenTelemetry span
    serving, after = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (serving["trace_id"], serving["span_id"]) == (f"{0xAAA:032x}", f"{0xBBB:016x}")
    assert (after["trace_id"], after["span_id"]) == (f"{0x111:032x}", f"{0x222:016x}")


def test_text_logs_append_trace_ids_inside_a_span() -> None:
    context = SpanContext(0x1, 0x2, False, TraceFlags(TraceFlags.SAMPLED))
    with (
        captured("batchwire.test.text", "text") as (logger, stream),
        trace.use_span(NonRecordingSpan(context)),
    ):
        logger.info("traced")
    assert stream.getvalue().rstrip().endswith(f"trace_id={1:032x} span_id={2:016x}")


def test_serve_command_has_the_observability_flags() -> None:
    from batchwire.server.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for flag in (
        "--metrics-port",
        "--trace-mode",
        "--trace-rate",
        "--trace-exporter",
        "--trace-endpoint",
        "--log-format",
    ):
        assert flag in result.output
    bad = CliRunner().invoke(app, ["serve", "--trace-mode", "sometimes"])
    assert bad.exit_code != 0


def test_grpc_late_answer_record_is_logged_at_warning_and_other_errors_stay() -> None:
    from batchwire.telemetry.logs import configure_logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    grpc_core = logging.getLogger("grpc._cython.cygrpc")
    saved_filters = list(grpc_core.filters)
    stream = io.StringIO()
    try:
        configure_logging("info")
        configure_logging("info")  # twice: one filter, not two
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        try:
            raise RuntimeError("Failed execute_batch")
        except RuntimeError:
            # grpc.aio formats the method name into the message itself.
            method = "/inference.GRPCInferenceService/ModelInfer"
            grpc_core.exception(f"ExecuteBatchError raised in core by servicer method [{method}]")
        grpc_core.error("Unexpected [ValueError] raised by servicer method [x]")
        filters = [f for f in grpc_core.filters if type(f).__name__ == "LateAnswerFilter"]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        grpc_core.filters[:] = saved_filters
    lines = [line for line in stream.getvalue().splitlines() if "servicer method" in line]
    assert len(filters) == 1
    assert len(lines) == 2, stream.getvalue()
    assert " WARNING " in lines[0] and "ExecuteBatchError" in lines[0]
    assert " ERROR " in lines[1] and "Unexpected [ValueError]" in lines[1]
