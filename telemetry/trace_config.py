"""Trace modes, span exporters and their defaults, declared once, and :class:`TraceConfig`.

The command line (``server/cli.py``), :class:`~batchwire.server.settings.ServerSettings`
and the tracing pipeline all take their choices and defaults from here. Standard
library only: ``batchwire serve --help`` lists the choices without loading
OpenTelemetry.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "DEFAULT_EXPORTER",
    "DEFAULT_MODE",
    "DEFAULT_RATIO",
    "DEFAULT_SERVICE_NAME",
    "TraceConfig",
    "TraceExporter",
    "TraceMode",
    "check_trace_settings",
]

log = logging.getLogger(__name__)


class TraceMode(str, enum.Enum):
    """Which requests are traced (a request with a sampled parent is, unless ``off``)."""

    off = "off"
    #: A fraction of the requests without a sampled parent (``--trace-rate``).
    ratio = "ratio"
    always = "always"


class TraceExporter(str, enum.Enum):
    """Where spans go."""

    otlp_grpc = "otlp-grpc"
    otlp_http = "otlp-http"
    #: JSON on the server's stdout (the SDK's console exporter).
    console = "console"
    #: Nowhere: requests are still sampled, so log records carry trace ids.
    none = "none"


DEFAULT_MODE = TraceMode.off
DEFAULT_EXPORTER = TraceExporter.otlp_grpc
#: The fraction traced in ratio mode when neither a flag nor OTEL_TRACES_SAMPLER_ARG says.
DEFAULT_RATIO = 0.1
DEFAULT_SERVICE_NAME = "batchwire"


def _choices(kind: type[enum.Enum]) -> str:
    return ", ".join(member.value for member in kind)


def env_value(environ: Mapping[str, str], *names: str) -> str | None:
    """The first of ``names`` set to a non-blank value in ``environ``, stripped."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


def check_trace_settings(mode: str | None, rate: float | None, exporter: str | None) -> None:
    """Raise ValueError, naming the setting, for a mode, rate or exporter (None: not
    given) that tracing does not take."""
    if mode is not None and mode not in {m.value for m in TraceMode}:
        raise ValueError(f"trace mode must be one of {_choices(TraceMode)}, got '{mode}'")
    if rate is not None and not 0.0 <= rate <= 1.0:
        raise ValueError(f"trace rate must be in [0, 1], got {rate}")
    if exporter is not None and exporter not in {e.value for e in TraceExporter}:
        raise ValueError(
            f"trace exporter must be one of {_choices(TraceExporter)}, got '{exporter}'"
        )


@dataclass(frozen=True, slots=True)
class TraceConfig:
    """Where traces go and how many: flags first, then ``OTEL_*`` variables, then defaults.

    ``mode`` and ``exporter`` hold the values of :class:`TraceMode` and
    :class:`TraceExporter` (plain strings; the enum members compare equal).
    """

    mode: str = DEFAULT_MODE.value
    #: Probability of tracing a request without a sampled parent (mode ``ratio``).
    rate: float = 1.0
    exporter: str = DEFAULT_EXPORTER.value
    #: None: the OTLP exporter reads OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT.
    endpoint: str | None = None
    service_name: str = DEFAULT_SERVICE_NAME

    def __post_init__(self) -> None:
        check_trace_settings(self.mode, self.rate, self.exporter)

    @classmethod
    def resolve(
        cls,
        *,
        mode: str | None = None,
        rate: float | None = None,
        exporter: str | None = None,
        endpoint: str | None = None,
        service_name: str = DEFAULT_SERVICE_NAME,
        environ: Mapping[str, str] | None = None,
    ) -> TraceConfig:
        """Merge explicit settings (None: not given) with the OTEL_* environment.

        Honoured: OTEL_SDK_DISABLED, OTEL_TRACES_SAMPLER (always_on, always_off,
        traceidratio and their parentbased_ forms; sampled parents are always
        followed), OTEL_TRACES_SAMPLER_ARG, OTEL_TRACES_EXPORTER (otlp, console,
        none) with OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL (grpc, http/protobuf), and
        OTEL_SERVICE_NAME. The OTLP transport reads its own variables
        (:mod:`batchwire.telemetry.otlp_transport`).
        """
        env = os.environ if environ is None else environ
        env_mode, env_rate = _sampler_from_env(env)
        if mode is None:
            mode = env_mode or DEFAULT_MODE.value
        if rate is None:
            if env_rate is not None and mode == TraceMode.ratio:
                rate = env_rate
            else:
                rate = DEFAULT_RATIO if mode == TraceMode.ratio else 1.0
        if exporter is None:
            exporter = _exporter_from_env(env) or DEFAULT_EXPORTER.value
        service = env_value(env, "OTEL_SERVICE_NAME") or service_name
        return cls(mode=mode, rate=rate, exporter=exporter, endpoint=endpoint, service_name=service)


def _sampler_from_env(env: Mapping[str, str]) -> tuple[str | None, float | None]:
    if (env_value(env, "OTEL_SDK_DISABLED") or "").lower() == "true":
        return TraceMode.off.value, None
    sampler = (env_value(env, "OTEL_TRACES_SAMPLER") or "").lower()
    if not sampler:
        return None, None
    arg = env_value(env, "OTEL_TRACES_SAMPLER_ARG")
    if sampler in ("always_on", "parentbased_always_on"):
        return TraceMode.always.value, None
    if sampler == "always_off":
        return TraceMode.off.value, None
    if sampler == "parentbased_always_off":
        return TraceMode.ratio.value, 0.0
    if sampler in ("traceidratio", "parentbased_traceidratio"):
        try:
            ratio = 1.0 if arg is None else float(arg)
        except ValueError:
            log.warning("OTEL_TRACES_SAMPLER_ARG=%r is not a number; using 1.0", arg)
            ratio = 1.0
        return TraceMode.ratio.value, min(max(ratio, 0.0), 1.0)
    log.warning("OTEL_TRACES_SAMPLER=%r is not supported; tracing stays off", sampler)
    return None, None


def _exporter_from_env(env: Mapping[str, str]) -> str | None:
    value = env_value(env, "OTEL_TRACES_EXPORTER")
    if value is None:
        return None
    for name in (part.strip().lower() for part in value.split(",")):
        if name == "otlp":
            protocol = env_value(
                env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"
            )
            grpc = (protocol or "grpc") == "grpc"
            return TraceExporter.otlp_grpc.value if grpc else TraceExporter.otlp_http.value
        if name in (TraceExporter.console, TraceExporter.none):
            return name
    log.warning("OTEL_TRACES_EXPORTER=%r names no supported exporter; using otlp", value)
    return None
