"""The ``batchwire`` command line: serve models, export the examples, run a client.

Importing this module stays cheap and needs only the client's dependencies:
``batchwire --help`` and ``batchwire infer`` run where the server's (torch,
OpenTelemetry, prometheus_client: ``batchwire[server]``) are not installed, so
each command imports the server, torch and telemetry inside its body.

Exit status of ``batchwire serve``: 0 after SIGINT or SIGTERM; 1 when the server
cannot start for a reason the operator can fix (a port in use, a missing or
unreadable model repository, the server dependencies not installed), said in one
line on stderr; 2 for an invalid option or environment variable value.
"""

from __future__ import annotations

import enum
import gc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer.core import TyperCommand

from batchwire import __version__
from batchwire.clients.cli import CONTEXT_SETTINGS, HelpCommand, HelpGroup
from batchwire.server.audit_cli import audit_app
from batchwire.server.auth_cli import auth_app
from batchwire.server.drift_cli import drift_app

# Choices and defaults of the --trace-* options, declared once for the whole server
# (standard library only: --help stays free of OpenTelemetry).
from batchwire.telemetry.trace_config import (
    DEFAULT_EXPORTER,
    DEFAULT_MODE,
    DEFAULT_RATIO,
    TraceExporter,
    TraceMode,
)

if TYPE_CHECKING:
    from batchwire.server.app import BatchwireServer

#: ``batchwire serve`` exit status when the server cannot start (usage errors exit with 2).
EXIT_STARTUP_FAILED = 1

#: Modules of the ``server`` extra (pyproject.toml) that ``serve`` always imports. The
#: base install is the client only; without these, serve says what to install.
SERVER_DEPENDENCY_MODULES = (
    "torch",
    "cryptography",
    "opentelemetry.trace",
    "opentelemetry.sdk",
    "opentelemetry.proto",
    "prometheus_client",
)

# Help goes through click's layout, not typer's rich panels, which cut option and
# environment variable names to fit 80 columns; see "help layout" in clients/cli.py.
app = typer.Typer(
    name="batchwire",
    help="gRPC inference server for PyTorch models (KServe v2 / Triton protocol).",
    no_args_is_help=True,
    add_completion=False,
    cls=HelpGroup,
    rich_markup_mode=None,
    context_settings=CONTEXT_SETTINGS,
)
examples_app = typer.Typer(
    help="Built-in example models.",
    no_args_is_help=True,
    cls=HelpGroup,
    rich_markup_mode=None,
    context_settings=CONTEXT_SETTINGS,
)
app.add_typer(examples_app, name="examples")
app.add_typer(audit_app, name="audit")
app.add_typer(auth_app, name="auth")
app.add_typer(drift_app, name="drift")


class LogLevel(str, enum.Enum):
    """The levels telemetry.logs maps Triton's log settings onto."""

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class LogFormat(str, enum.Enum):
    text = "text"
    json = "json"


def _version(value: bool) -> None:
    """``--version``: print the program's version and stop."""
    if value:
        typer.echo(f"batchwire {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print batchwire's version."
        ),
    ] = False,
) -> None:
    """gRPC inference server for PyTorch models (KServe v2 / Triton protocol)."""


def integer_parser(expected: str, low: int, high: int | None = None) -> Callable[[str | int], int]:
    """A typer ``parser``: an integer in [low, high], else a message saying what was expected.

    Used instead of typer's ``min``/``max``, whose message in recent typer releases
    ("Input should be less than or equal to 65535") leaves out the value given.
    ``expected`` names the quantity: "a port number".
    """
    span = f"from {low} to {high}" if high is not None else f"of {low} or more"

    def parse(text: str | int) -> int:
        # Defaults come through here as ints, command-line and environment values as str.
        try:
            value = int(text)
        except ValueError:
            raise typer.BadParameter(f"expected {expected} {span}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise typer.BadParameter(f"expected {expected} {span}, got {value}")
        return value

    return parse


def fraction(text: str | float) -> float:
    """A typer ``parser``: a number from 0 to 1, else a message saying what was expected."""
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"expected a fraction from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise typer.BadParameter(f"expected a fraction from 0 to 1, got {value}")
    return value


def triton_bool(text: str | bool) -> bool:
    """A typer ``parser`` for Triton's boolean options: ``--grpc-use-ssl=true`` (or bare).

    Triton spells them with a value (true/false, on/off, 1/0); a bare flag means true.
    """
    if isinstance(text, bool):
        return text
    value = text.strip().lower()
    if value in ("true", "on", "1", "yes"):
        return True
    if value in ("false", "off", "0", "no"):
        return False
    raise typer.BadParameter(f"expected true or false, got {text!r}")


def boolean_word(text: str) -> str:
    """A typer ``callback`` for a boolean option that takes a value: ``text`` unchanged
    when :func:`triton_bool` reads it, else a usage error (exit 2)."""
    triton_bool(text)
    return text


def positive_days(text: str | float) -> float:
    """A typer ``parser``: a number of days above 0."""
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"expected a number of days above 0, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise typer.BadParameter(f"expected a number of days above 0, got {value}")
    return value


def positive_seconds(text: str | float) -> float:
    """A typer ``parser``: a number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"expected a number of seconds above 0, got {text!r}") from None
    if not value > 0:
        raise typer.BadParameter(f"expected a number of seconds above 0, got {value}")
    return value


def seconds_at_least_zero(text: str | float) -> float:
    """A typer ``parser``: a number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(
            f"expected a number of seconds of 0 or more, got {text!r}"
        ) from None
    if not 0 <= value < float("inf"):  # NaN fails this too
        raise typer.BadParameter(f"expected a number of seconds of 0 or more, got {value}")
    return value


def restricted_protocol(values: list[str] | None) -> list[str] | None:
    """A typer ``callback``: every --grpc-restricted-protocol value checked (exit 2 if bad)."""
    from batchwire.server.access import AccessConfigError, parse_restricted_protocol

    try:
        parse_restricted_protocol(values or ())
    except AccessConfigError as exc:
        raise typer.BadParameter(str(exc).split(": ", 1)[1]) from None
    return values


def cache_config(values: list[str] | None) -> list[str] | None:
    """A typer ``callback``: the --cache-config values checked (exit 2, Triton's messages)."""
    if values:
        from batchwire.server.response_cache import CacheConfigError, parse_cache_config

        try:
            parse_cache_config(values)
        except CacheConfigError as exc:
            raise typer.BadParameter(str(exc)) from None
    return values


class ModelControlMode(str, enum.Enum):
    """Triton's --model-control-mode values."""

    none = "none"
    poll = "poll"
    explicit = "explicit"


def fail(line: str, code: int = EXIT_STARTUP_FAILED) -> NoReturn:
    """End the command with ``line`` as the only thing on stderr."""
    typer.echo(line, err=True)
    raise typer.Exit(code)


def require_server_dependencies(command: str, modules: Sequence[str]) -> None:
    """Fail with one line naming the missing ones when ``modules`` are not all installed.

    Looked up without being imported, so that every missing module is named at once and
    a dependency that fails while importing keeps its traceback.
    """
    missing = [name for name in modules if _find_spec(name) is None]
    if missing:
        fail(
            f"batchwire {command} needs the server dependencies: "
            f"pip install 'batchwire[server]' (missing: {', '.join(missing)})"
        )


def _find_spec(name: str) -> object | None:
    """importlib's find_spec, with a missing parent package counting as missing."""
    from importlib.util import find_spec

    try:
        return find_spec(name)
    except ModuleNotFoundError:
        return None


def configure_logging(level: str, log_format: str = "text") -> None:
    """One stderr handler on the root logger: text or JSON lines, with trace ids inside spans."""
    from batchwire.telemetry.logs import configure_logging as configure

    configure(level, log_format)


#: Triton's boolean options of ``serve``: declared as flags, they also take a value.
TRITON_BOOLEAN_OPTIONS = (
    "--grpc-use-ssl",
    "--grpc-use-ssl-mutual",
    "--allow-client-shm",
    "--audit-payloads",
)
_BOOLEAN_WORDS = ("true", "on", "1", "yes", "false", "off", "0", "no")


def triton_boolean_args(args: Sequence[str], options: Sequence[str]) -> list[str]:
    """``args`` with each of Triton's boolean ``options`` turned into a bare flag or nothing.

    Triton writes them with a value (``--grpc-use-ssl=true``, ``--grpc-use-ssl 1``);
    typer's options are either flags or take a value, never both, so they are declared
    as flags and their value is read here: true keeps the bare flag, false drops it,
    the last occurrence wins, anything else is a usage error. Nothing after ``--``.
    """
    out: list[str] = []
    values: dict[str, bool] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            out += args[index:]
            break
        name, equals, text = arg.partition("=")
        if name not in options:
            out.append(arg)
        elif equals:
            values[name] = _triton_boolean_value(name, text)
        elif index + 1 < len(args) and args[index + 1].strip().lower() in _BOOLEAN_WORDS:
            index += 1
            values[name] = _triton_boolean_value(name, args[index])
        else:
            values[name] = True
        index += 1
    flags = [name for name, value in values.items() if value]
    cut = out.index("--") if "--" in out else len(out)
    return out[:cut] + flags + out[cut:]


def _triton_boolean_value(name: str, text: str) -> bool:
    try:
        return triton_bool(text)
    except typer.BadParameter as exc:
        raise typer.BadParameter(exc.message, param_hint=f"'{name}'") from None


class ServeCommand(HelpCommand):
    """``serve``'s command: reads Triton's boolean option values (:func:`triton_boolean_args`)."""

    # ctx is click's Context of the copy of click typer bundles; typer exports only its
    # own subclass, so the parameter is left untyped rather than named privately.
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            args = triton_boolean_args(args, TRITON_BOOLEAN_OPTIONS)
        except typer.BadParameter as exc:
            exc.ctx = ctx  # for the usage lines above the error, as click's own errors
            raise
        return super().parse_args(ctx, args)


@app.command(cls=ServeCommand, context_settings=CONTEXT_SETTINGS)
def serve(
    model_repository: Annotated[
        Path | None,
        typer.Option(
            "--model-repository",
            envvar="BATCHWIRE_MODEL_REPOSITORY",
            help="Triton-layout model repository. Default: the built-in example models.",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(envvar="BATCHWIRE_HOST", help="Address to listen on.")
    ] = "0.0.0.0",
    port: Annotated[
        int,
        typer.Option(
            "--port",
            "--grpc-port",
            envvar="BATCHWIRE_GRPC_PORT",
            metavar="<port>",
            parser=integer_parser("a port number", 0, 65535),
            help="gRPC port, 0 to 65535; 0 picks a free one.",
        ),
    ] = 8001,
    max_message_mb: Annotated[
        int,
        typer.Option(
            metavar="<MiB>",
            parser=integer_parser("a size in MiB", 1, 2047),
            help="Largest gRPC message accepted or sent, in MiB: 1 to 2047.",
        ),
    ] = 2047,
    allow_pickled_models: Annotated[
        bool,
        typer.Option(help="Load pickled nn.Module files (they run arbitrary code when loaded)."),
    ] = False,
    intra_op_threads: Annotated[
        int | None,
        typer.Option(
            metavar="<threads>",
            parser=integer_parser("a thread count", 1),
            help="torch intra-op threads per CPU model instance, 1 or more. Default: one for "
            "short batches, else the cores shared among the model's instances.",
        ),
    ] = None,
    log_level: Annotated[
        LogLevel,
        typer.Option(
            envvar="BATCHWIRE_LOG_LEVEL",
            case_sensitive=False,
            help="Least severe messages logged: debug (Triton's --log-verbose), info, "
            "warning or error. The LogSettings RPC changes it while running.",
        ),
    ] = LogLevel.info,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            envvar="BATCHWIRE_LOG_FORMAT",
            case_sensitive=False,
            help="text, or json: one object per line, with trace_id and span_id inside a span.",
        ),
    ] = LogFormat.text,
    metrics_port: Annotated[
        int,
        typer.Option(
            envvar="BATCHWIRE_METRICS_PORT",
            metavar="<port>",
            parser=integer_parser("a port number", 0, 65535),
            help="Prometheus /metrics port, 0 to 65535; 0 turns the endpoint off.",
        ),
    ] = 8002,
    metrics_address: Annotated[
        str | None,
        typer.Option(
            envvar="BATCHWIRE_METRICS_ADDRESS",
            help="Address the metrics endpoint listens on. Default: --host.",
        ),
    ] = None,
    grpc_use_ssl: Annotated[
        bool,
        typer.Option(
            "--grpc-use-ssl",
            envvar="BATCHWIRE_GRPC_USE_SSL",
            parser=triton_bool,
            show_default="false",
            help="TLS on the gRPC port (needs --grpc-server-cert and --grpc-server-key). "
            "Bare, or with Triton's value: --grpc-use-ssl=true.",
        ),
    ] = False,
    grpc_use_ssl_mutual: Annotated[
        bool,
        typer.Option(
            "--grpc-use-ssl-mutual",
            envvar="BATCHWIRE_GRPC_USE_SSL_MUTUAL",
            parser=triton_bool,
            show_default="false",
            help="Mutual TLS: clients need a certificate signed by --grpc-root-cert. "
            "Bare, or with Triton's value: --grpc-use-ssl-mutual=true.",
        ),
    ] = False,
    grpc_server_cert: Annotated[
        Path | None,
        typer.Option(
            envvar="BATCHWIRE_GRPC_SERVER_CERT",
            help="PEM certificate (chain) of the server; reloaded when the file changes.",
        ),
    ] = None,
    grpc_server_key: Annotated[
        Path | None,
        typer.Option(
            envvar="BATCHWIRE_GRPC_SERVER_KEY",
            help="PEM private key of --grpc-server-cert; reloaded when the file changes.",
        ),
    ] = None,
    grpc_root_cert: Annotated[
        Path | None,
        typer.Option(
            envvar="BATCHWIRE_GRPC_ROOT_CERT",
            help="PEM CA certificate(s) client certificates must chain to (mutual TLS).",
        ),
    ] = None,
    grpc_restricted_protocol: Annotated[
        list[str] | None,
        typer.Option(
            envvar="BATCHWIRE_GRPC_RESTRICTED_PROTOCOL",
            metavar="<groups>:<key>=<value>",
            callback=restricted_protocol,
            help="Refuse the RPCs of the comma-separated groups (health, metadata, "
            "inference, shared-memory, model-config, model-repository, statistics, trace, "
            "logging) unless the header <key> is <value>. Repeatable.",
        ),
    ] = None,
    auth_config: Annotated[
        Path | None,
        typer.Option(
            envvar="BATCHWIRE_AUTH_CONFIG",
            help="Principals, their tokens or certificate names, and scopes (see "
            "SECURITY.md); reloaded when the file changes.",
        ),
    ] = None,
    model_control_mode: Annotated[
        ModelControlMode,
        typer.Option(
            envvar="BATCHWIRE_MODEL_CONTROL_MODE",
            case_sensitive=False,
            help="none: load every model at start, refuse load/unload requests; explicit: "
            "load the --load-model ones, allow load/unload; poll: follow the repository's "
            "changes every --repository-poll-secs.",
        ),
    ] = ModelControlMode.none,
    load_model: Annotated[
        list[str] | None,
        typer.Option(
            envvar="BATCHWIRE_LOAD_MODEL",
            metavar="<model>",
            help="Model to load at start in explicit mode, * for all. Repeatable.",
        ),
    ] = None,
    repository_poll_secs: Annotated[
        float,
        typer.Option(
            envvar="BATCHWIRE_REPOSITORY_POLL_SECS",
            metavar="<seconds>",
            parser=positive_seconds,
            help="Seconds between repository scans in poll mode.",
        ),
    ] = 15.0,
    max_inflight_requests: Annotated[
        int,
        typer.Option(
            envvar="BATCHWIRE_MAX_INFLIGHT_REQUESTS",
            metavar="<count>",
            parser=integer_parser("a request count", 0),
            help="Inference requests in flight in the server; more get RESOURCE_EXHAUSTED. "
            "0: no limit.",
        ),
    ] = 0,
    max_inflight_requests_per_connection: Annotated[
        int,
        typer.Option(
            envvar="BATCHWIRE_MAX_INFLIGHT_PER_CONNECTION",
            metavar="<count>",
            parser=integer_parser("a request count", 0),
            help="The same per client connection. 0: no limit.",
        ),
    ] = 0,
    max_open_streams: Annotated[
        int,
        typer.Option(
            envvar="BATCHWIRE_MAX_OPEN_STREAMS",
            metavar="<count>",
            parser=integer_parser("a stream count", 0),
            help="ModelStreamInfer streams open at once in the server; more get "
            "RESOURCE_EXHAUSTED. 0: no limit.",
        ),
    ] = 0,
    allow_client_shm: Annotated[
        bool,
        typer.Option(
            "--allow-client-shm",
            envvar="BATCHWIRE_ALLOW_CLIENT_SHM",
            parser=triton_bool,
            show_default="false",
            help="Let clients register system shared-memory regions and pass tensors "
            "through them (same host only). Bare, or with Triton's value: "
            "--allow-client-shm=true.",
        ),
    ] = False,
    cache_config: Annotated[
        list[str] | None,
        typer.Option(
            "--cache-config",
            envvar="BATCHWIRE_CACHE_CONFIG",
            metavar="<cache>,<setting>=<value>",
            callback=cache_config,
            help="Triton's response cache: local,size=<bytes> caches the responses of the "
            "models whose config.pbtxt has response_cache { enable: true } (see "
            "docs/response-cache.md).",
        ),
    ] = None,
    audit_log: Annotated[
        Path | None,
        typer.Option(
            "--audit-log",
            envvar="BATCHWIRE_AUDIT_LOG",
            metavar="<dir>",
            help="Keep a tamper-evident audit log in this directory: one chained JSON line "
            "per inference request (docs/governance.md); check it with `batchwire audit "
            "verify`.",
        ),
    ] = None,
    audit_payloads: Annotated[
        bool,
        typer.Option(
            "--audit-payloads",
            envvar="BATCHWIRE_AUDIT_PAYLOADS",
            parser=triton_bool,
            show_default="false",
            help="Audit records carry the tensors' bytes too, except the names a model's "
            "batchwire.audit_redact lists.",
        ),
    ] = False,
    audit_signing_key: Annotated[
        Path | None,
        typer.Option(
            "--audit-signing-key",
            envvar="BATCHWIRE_AUDIT_SIGNING_KEY",
            metavar="<pem>",
            help="Ed25519 private key (openssl genpkey -algorithm ed25519) that signs the "
            "audit log's checkpoints.",
        ),
    ] = None,
    audit_queue_size: Annotated[
        int,
        typer.Option(
            envvar="BATCHWIRE_AUDIT_QUEUE_SIZE",
            metavar="<records>",
            parser=integer_parser("a record count", 1),
            help="Audit records waiting for the writer thread, at most.",
        ),
    ] = 10000,
    audit_queue_full: Annotated[
        str,
        typer.Option(
            envvar="BATCHWIRE_AUDIT_QUEUE_FULL",
            metavar="block|drop",
            help="When the audit queue is full (or the disk fails): block (answers wait for "
            "room; no record is lost) or drop (records are dropped and counted).",
        ),
    ] = "block",
    audit_rotate_bytes: Annotated[
        int,
        typer.Option(
            envvar="BATCHWIRE_AUDIT_ROTATE_BYTES",
            metavar="<bytes>",
            parser=integer_parser("a size in bytes", 4096),
            help="Begin a new audit log file past this size.",
        ),
    ] = 100 * 2**20,
    audit_rotate_secs: Annotated[
        float,
        typer.Option(
            envvar="BATCHWIRE_AUDIT_ROTATE_SECS",
            metavar="<seconds>",
            parser=positive_seconds,
            help="Begin a new audit log file after this many seconds.",
        ),
    ] = 86400.0,
    audit_retention_days: Annotated[
        float,
        typer.Option(
            envvar="BATCHWIRE_AUDIT_RETENTION_DAYS",
            metavar="<days>",
            parser=positive_days,
            help="Delete closed audit log files older than this (default: six months).",
        ),
    ] = 183.0,
    audit_checkpoint_records: Annotated[
        int,
        typer.Option(
            envvar="BATCHWIRE_AUDIT_CHECKPOINT_RECORDS",
            metavar="<records>",
            parser=integer_parser("a record count", 1),
            help="Write a checkpoint (signed with --audit-signing-key) every this many "
            "audit records, or every --audit-checkpoint-secs, whichever comes first.",
        ),
    ] = 1000,
    audit_checkpoint_secs: Annotated[
        float,
        typer.Option(
            envvar="BATCHWIRE_AUDIT_CHECKPOINT_SECS",
            metavar="<seconds>",
            parser=positive_seconds,
            help="Seconds between audit checkpoints at most (see --audit-checkpoint-records).",
        ),
    ] = 60.0,
    drift_statistics: Annotated[
        str,
        typer.Option(
            "--drift-statistics",
            envvar="BATCHWIRE_DRIFT_STATISTICS",
            metavar="true|false",
            # A value, not a flag: on by default, so the operator writes =false.
            callback=boolean_word,
            help="Count live tensors against each version's reference profile "
            "(drift_profile.json) and export PSI on /metrics.",
        ),
    ] = "true",
    grpc_max_concurrent_streams: Annotated[
        int,
        typer.Option(
            envvar="BATCHWIRE_GRPC_MAX_CONCURRENT_STREAMS",
            metavar="<count>",
            parser=integer_parser("a stream count", 0),
            help="Calls one client connection may have open at once; more wait in the "
            "client. 0: gRPC's default.",
        ),
    ] = 0,
    exit_timeout_secs: Annotated[
        float,
        typer.Option(
            envvar="BATCHWIRE_EXIT_TIMEOUT_SECS",
            metavar="<seconds>",
            parser=seconds_at_least_zero,
            help="On SIGTERM/SIGINT, seconds the requests already accepted get to finish "
            "(new ones get UNAVAILABLE); what is left then gets UNAVAILABLE too.",
        ),
    ] = 30.0,
    shutdown_delay_secs: Annotated[
        float,
        typer.Option(
            envvar="BATCHWIRE_SHUTDOWN_DELAY_SECS",
            metavar="<seconds>",
            parser=seconds_at_least_zero,
            help="On SIGTERM/SIGINT, seconds to keep serving while health and readiness "
            "already say not serving (load balancers stop routing first), before "
            "--exit-timeout-secs starts.",
        ),
    ] = 0.0,
    trace_mode: Annotated[
        TraceMode | None,
        typer.Option(
            help="Tracing: off, ratio (--trace-rate of requests) or always; requests with a "
            "sampled traceparent are traced unless off. Default: OTEL_TRACES_SAMPLER, "
            f"else {DEFAULT_MODE.value}.",
        ),
    ] = None,
    trace_rate: Annotated[
        float | None,
        typer.Option(
            metavar="<fraction>",
            parser=fraction,
            help="Fraction traced in ratio mode, 0 to 1. Default: OTEL_TRACES_SAMPLER_ARG, "
            f"else {DEFAULT_RATIO}.",
        ),
    ] = None,
    trace_exporter: Annotated[
        TraceExporter | None,
        typer.Option(
            help=f"Span exporter. Default: OTEL_TRACES_EXPORTER, else {DEFAULT_EXPORTER.value}."
        ),
    ] = None,
    trace_endpoint: Annotated[
        str | None,
        typer.Option(
            help="Collector address, host:port or URL. Default: OTEL_EXPORTER_OTLP_ENDPOINT, "
            "else the exporter's own (localhost:4317 for gRPC, localhost:4318 for HTTP).",
        ),
    ] = None,
) -> None:
    """Serve a model repository (the built-in examples when none is given).

    On SIGINT or SIGTERM health says not serving at once; requests are served for
    --shutdown-delay-secs, then refused (UNAVAILABLE) while those accepted get
    --exit-timeout-secs to finish (docs/shutdown.md).

    Exit status: 0 after SIGINT or SIGTERM; 1 when the server cannot start (a port in
    use, a missing or unreadable repository, no server dependencies), said in one line
    on stderr; 2 for an invalid option value.
    """
    require_server_dependencies("serve", SERVER_DEPENDENCY_MODULES)
    from batchwire.server.app import BatchwireServer, StartupError, new_event_loop
    from batchwire.server.settings import ServerSettings

    configure_logging(log_level.value, log_format.value)
    try:
        settings = ServerSettings(
            host=host,
            port=port,
            model_repository=model_repository,
            max_message_bytes=min(max_message_mb * 2**20, 2**31 - 1),
            allow_pickled_models=allow_pickled_models,
            intra_op_threads=intra_op_threads,
            metrics_port=metrics_port,
            # An operator who asked for metrics on a port is told it is taken, not left
            # without them behind one log line.
            metrics_required=True,
            trace_mode=trace_mode.value if trace_mode is not None else None,
            trace_rate=trace_rate,
            trace_exporter=trace_exporter.value if trace_exporter is not None else None,
            trace_endpoint=trace_endpoint,
            grpc_use_ssl=grpc_use_ssl,
            grpc_use_ssl_mutual=grpc_use_ssl_mutual,
            grpc_server_cert=grpc_server_cert,
            grpc_server_key=grpc_server_key,
            grpc_root_cert=grpc_root_cert,
            metrics_address=metrics_address,
            grpc_restricted_protocol=tuple(grpc_restricted_protocol or ()),
            auth_config=auth_config,
            model_control_mode=model_control_mode.value,
            load_models=tuple(load_model or ()),
            repository_poll_secs=repository_poll_secs,
            max_inflight_requests=max_inflight_requests,
            max_inflight_requests_per_connection=max_inflight_requests_per_connection,
            grpc_max_concurrent_streams=grpc_max_concurrent_streams,
            max_open_streams=max_open_streams,
            allow_client_shm=allow_client_shm,
            cache_config=tuple(cache_config or ()),
            audit_log=audit_log,
            audit_payloads=audit_payloads,
            audit_signing_key=audit_signing_key,
            audit_queue_size=audit_queue_size,
            audit_queue_full=audit_queue_full,
            audit_rotate_bytes=audit_rotate_bytes,
            audit_rotate_secs=audit_rotate_secs,
            audit_retention_days=audit_retention_days,
            audit_checkpoint_records=audit_checkpoint_records,
            audit_checkpoint_secs=audit_checkpoint_secs,
            drift_statistics=triton_bool(drift_statistics),
            exit_timeout_secs=exit_timeout_secs,
            shutdown_delay_secs=shutdown_delay_secs,
        )
    except ValueError as exc:  # options each valid, together not (--grpc-use-ssl alone)
        raise typer.BadParameter(str(exc)) from None
    server = BatchwireServer(settings)
    loop = new_event_loop()
    try:
        loop.run_until_complete(serve_until_signalled(server))
    except StartupError as exc:
        fail(f"batchwire: {exc}")
    finally:
        loop.close()
    exit_despite_stuck_threads()


async def serve_until_signalled(server: BatchwireServer) -> None:
    """Start ``server``, serve until SIGINT or SIGTERM, then stop it gracefully.

    A failed start still stops the server: start() may have bound a port, started the
    metrics endpoint or exported the examples into a temporary folder before failing.
    """
    import asyncio
    import logging
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except BaseException:
        await server.stop(grace=0, delay=0)
        raise
    freeze_startup_objects()
    await stop.wait()
    logging.getLogger("batchwire").info("shutting down")
    await server.stop()


def exit_despite_stuck_threads() -> None:
    """Exit with status 0 now if a model's worker thread is still running after stop().

    A model that hung past the exit timeout leaves its worker thread running (its
    requests were answered UNAVAILABLE); the interpreter would wait for that thread
    at exit forever. Everything else is done by then (responses sent, exporters
    flushed), so the process ends without waiting for it.
    """
    import logging
    import os
    import sys
    import threading

    stuck = [
        thread
        for thread in threading.enumerate()
        if thread.is_alive() and not thread.daemon and thread is not threading.main_thread()
    ]
    for thread in stuck:
        thread.join(timeout=0.5)  # one finishing its last step
    stuck = [thread for thread in stuck if thread.is_alive()]
    if not stuck:
        return
    logging.getLogger("batchwire").warning(
        "exiting with %d thread(s) still running (%s): a model did not finish in time",
        len(stuck),
        ", ".join(thread.name for thread in stuck),
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def freeze_startup_objects() -> None:
    """Exempt everything built at startup (torch, models, protobuf) from the cyclic GC.

    Requests allocate enough to trigger a collection every few requests, and each older
    generation's collection walks every tracked object in the process; torch and the
    loaded models make that hundreds of thousands. Measured here: a 32-request null
    batch cost 470 us with them tracked, 175 us frozen. This process owns its heap, so
    the server command does it; a program embedding the server decides for itself.
    """
    gc.collect()
    gc.freeze()


@examples_app.command("export", cls=HelpCommand, context_settings=CONTEXT_SETTINGS)
def export(
    dest: Annotated[Path, typer.Argument(help="Folder to write the repository into.")],
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Export only these (repeatable).")
    ] = None,
    canary: Annotated[
        bool,
        typer.Option(
            "--canary",
            help="Also write mlp_canary: two versions with a 90/10 traffic split, a shadow "
            "and a rollback gate.",
        ),
    ] = False,
) -> None:
    """Write the built-in example models as a Triton-layout model repository."""
    require_server_dependencies("examples export", ("torch",))
    from batchwire.examples.export import EXAMPLE_NAMES, export_canary, export_examples

    unknown = sorted(set(model or ()) - set(EXAMPLE_NAMES))
    if unknown:
        raise typer.BadParameter(
            f"unknown example(s) {', '.join(unknown)}; expected some of {', '.join(EXAMPLE_NAMES)}",
            param_hint="--model",
        )
    names = export_examples(dest, model or None)
    for name in names:
        typer.echo(f"wrote {dest / name}")
    if canary:
        typer.echo(f"wrote {export_canary(dest)}")


@app.command("soak")
def soak(
    out: Annotated[Path, typer.Option(help="Folder for soak.json, soak.png and the log.")] = Path(
        "results/soak"
    ),
    short: Annotated[bool, typer.Option("--short", help="25 s in all (CI).")] = False,
    seconds: Annotated[
        float | None, typer.Option(help="The whole run, warm-up included (default 180).")
    ] = None,
    warmup: Annotated[
        float | None, typer.Option(help="Seconds before the resource baseline.")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Unary callers.")] = None,
    streams: Annotated[int | None, typer.Option(help="Stream callers.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the load's random choices.")] = 0,
) -> None:
    """Soak a server of the example models on 127.0.0.1; check nothing is lost or leaks.

    The same run as ``python -m batchwire.bench.soak`` (its docstring lists the load,
    the faults and the checks). Exits 1 when a check fails.
    """
    require_server_dependencies("soak", ("torch", "matplotlib"))
    from batchwire.bench.soak import main as soak_main

    argv = ["--out", str(out), "--seed", str(seed)] + (["--short"] if short else [])
    for flag, value in (
        ("--seconds", seconds),
        ("--warmup", warmup),
        ("--workers", workers),
        ("--streams", streams),
    ):
        if value is not None:
            argv += [flag, str(value)]
    raise typer.Exit(soak_main(argv, prog="batchwire soak"))


def _register_optional_commands() -> None:
    from batchwire.clients.cli import register as register_client
    from batchwire.loadtest.cli import register as register_loadtest

    register_client(app)
    register_loadtest(app)
    # Commands registered by other modules get the same help layout and width as ours,
    # unless they chose a command class of their own.
    for info in app.registered_commands:
        if info.cls in (None, TyperCommand):
            info.cls = HelpCommand
        info.context_settings = {**CONTEXT_SETTINGS, **(info.context_settings or {})}


_register_optional_commands()


def main() -> None:
    """Entry point of the ``batchwire`` console script."""
    app()
