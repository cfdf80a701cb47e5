"""Logging: text or JSON records carrying trace ids, and Triton's LogSettings.

- :func:`configure_logging` installs one stream handler on the root logger
  with :class:`TextFormatter` or :class:`JsonFormatter`; both get a
  :class:`TraceContextFilter`, so records logged inside a span carry its
  ``trace_id`` and ``span_id`` (text: appended as ``trace_id=... span_id=...``;
  JSON: fields).
- :class:`LogControl` maps the LogSettings RPC (``log_info``, ``log_warning``,
  ``log_error``, ``log_verbose_level``, ``log_format``, ``log_file``) onto the
  level of the ``batchwire`` logger and the formatters' timestamp format.
  Python levels nest, so the most verbose enabled flag wins: a verbose level
  > 0 means DEBUG, then INFO, WARNING, ERROR; all off silences batchwire.
  ``log_file`` is not implemented: only an empty value is accepted.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from typing import TextIO

from opentelemetry.trace import get_current_span

from batchwire.telemetry.tracing import ACTIVE_REQUEST

LOG_FORMATS = ("text", "json")
#: Triton's log_format values: "default" (``%(asctime)s``) and ISO 8601 timestamps.
TIMESTAMP_FORMATS = ("default", "ISO8601")

_formatters: weakref.WeakSet[_TimestampMixin] = weakref.WeakSet()
_formatters_lock = threading.Lock()


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id`` / ``span_id`` (hex; empty outside a span) to every record.

    The traced request the running task serves comes first (the servicer marks it
    in :data:`~batchwire.telemetry.tracing.ACTIVE_REQUEST`), then OpenTelemetry's
    current span (code running inside a span of its own).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        active = ACTIVE_REQUEST.get()
        if active is not None:
            record.trace_id = format(active[0], "032x")
            record.span_id = format(active[1], "016x")
            return True
        context = get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        else:
            record.trace_id = record.span_id = ""
        return True


def _iso8601(created: float) -> str:
    seconds = int(created)
    micros = int((created - seconds) * 1e6)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


class _TimestampMixin:
    iso8601: bool = False


class TextFormatter(_TimestampMixin, logging.Formatter):
    """``time LEVEL logger: message [trace_id=... span_id=...]``."""

    def __init__(self, iso8601: bool = False) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.iso8601 = iso8601
        with _formatters_lock:
            _formatters.add(self)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if self.iso8601:
            return _iso8601(record.created)
        return super().formatTime(record, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        trace_id = getattr(record, "trace_id", "")
        if trace_id:
            text += f" trace_id={trace_id} span_id={getattr(record, 'span_id', '')}"
        return text


class JsonFormatter(_TimestampMixin, logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, trace_id, span_id, ..."""

    iso8601 = True

    def __init__(self) -> None:
        super().__init__()
        with _formatters_lock:
            _formatters.add(self)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "timestamp": _iso8601(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "thread": record.threadName,
        }
        trace_id = getattr(record, "trace_id", "")
        if trace_id:
            entry["trace_id"] = trace_id
            entry["span_id"] = getattr(record, "span_id", "")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class LateAnswerFilter(logging.Filter):
    """Logs grpc's "ExecuteBatchError raised in core by servicer method" at WARNING.

    grpc.aio logs that record at ERROR when a handler's final answer cannot be sent
    because the call already ended (its deadline passed, or the client's cancel had not
    yet been read when the answer was ready: grpc's own race). The caller already has
    its status (DEADLINE_EXCEEDED, CANCELLED, or UNAVAILABLE for a dropped
    connection), and the server has nothing left to do, so it is not an error of the
    server; it stays in the log, one level lower, so that ERROR means a server fault.
    Attached to grpc's ``grpc._cython.cygrpc`` logger by :func:`configure_logging`;
    records are changed in place, as logging allows filters to do.
    """

    MESSAGE = "ExecuteBatchError raised in core by servicer method"

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg
        if (
            record.levelno == logging.ERROR
            and isinstance(message, str)
            and message.startswith(self.MESSAGE)
        ):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def make_handler(log_format: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """A stream handler with the trace-context filter and the chosen formatter."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got '{log_format}'")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    return handler


def configure_logging(level: str = "info", log_format: str = "text") -> logging.Handler:
    """Replace the root logger's handlers with one :func:`make_handler` handler."""
    handler = make_handler(log_format)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    grpc_core = logging.getLogger("grpc._cython.cygrpc")
    if not any(isinstance(f, LateAnswerFilter) for f in grpc_core.filters):
        grpc_core.addFilter(LateAnswerFilter())
    return handler


class LogSettingError(ValueError):
    """A LogSettings update names an unknown key or gives a value of the wrong type."""


#: key -> the Python type its value must have.
LOG_SETTING_TYPES: dict[str, type] = {
    "log_file": str,
    "log_info": bool,
    "log_warning": bool,
    "log_error": bool,
    "log_verbose_level": int,
    "log_format": str,
}


class LogControl:
    """Triton's log settings, applied to the ``batchwire`` logger (process-wide)."""

    def __init__(self, logger: str = "batchwire") -> None:
        self.logger = logging.getLogger(logger)
        level = self.logger.getEffectiveLevel()
        self._settings: dict[str, object] = {
            "log_file": "",
            "log_info": level <= logging.INFO,
            "log_warning": level <= logging.WARNING,
            "log_error": level <= logging.ERROR,
            "log_verbose_level": 1 if level <= logging.DEBUG else 0,
            "log_format": "default",
        }

    def get(self) -> dict[str, object]:
        return dict(self._settings)

    def update(self, changes: Mapping[str, object]) -> dict[str, object]:
        """Validate and apply ``changes`` (None values are left as they are)."""
        merged = dict(self._settings)
        for key, value in changes.items():
            expected = LOG_SETTING_TYPES.get(key)
            if expected is None:
                raise LogSettingError(
                    f"unknown log setting '{key}'; expected one of {', '.join(LOG_SETTING_TYPES)}"
                )
            if value is None:
                continue
            if type(value) is not expected:
                raise LogSettingError(
                    f"log setting '{key}' must be a {expected.__name__}, got {type(value).__name__}"
                )
            if key == "log_file" and value:
                raise LogSettingError(
                    "log_file is not supported: batchwire logs to stderr (redirect it, or use "
                    "--log-format json with a log shipper)"
                )
            if key == "log_format" and value not in TIMESTAMP_FORMATS:
                raise LogSettingError(
                    f"log_format must be one of {', '.join(TIMESTAMP_FORMATS)}, got '{value}'"
                )
            if key == "log_verbose_level" and isinstance(value, int) and value < 0:
                raise LogSettingError(f"log_verbose_level must be >= 0, got {value}")
            merged[key] = value
        self._settings = merged
        self._apply()
        return self.get()

    def _apply(self) -> None:
        s = self._settings
        if s["log_verbose_level"]:
            level = logging.DEBUG
        elif s["log_info"]:
            level = logging.INFO
        elif s["log_warning"]:
            level = logging.WARNING
        elif s["log_error"]:
            level = logging.ERROR
        else:
            level = logging.CRITICAL + 10
        self.logger.setLevel(level)
        iso = s["log_format"] == "ISO8601"
        with _formatters_lock:
            for formatter in list(_formatters):
                if isinstance(formatter, TextFormatter):
                    formatter.iso8601 = iso
