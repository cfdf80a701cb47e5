"""The ``batchwire`` command line: serve models, export the examples, run a client."""

from __future__ import annotations

import asyncio
import enum
import gc
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from batchwire import __version__

app = typer.Typer(
    name="batchwire",
    help="gRPC inference server for PyTorch models (KServe v2 / Triton protocol).",
    no_args_is_help=True,
    add_completion=False,
)
examples_app = typer.Typer(help="Built-in example models.", no_args_is_help=True)
app.add_typer(examples_app, name="examples")


class LogFormat(str, enum.Enum):
    text = "text"
    json = "json"


class TraceMode(str, enum.Enum):
    off = "off"
    ratio = "ratio"
    always = "always"


class TraceExporter(str, enum.Enum):
    otlp_grpc = "otlp-grpc"
    otlp_http = "otlp-http"
    console = "console"
    none = "none"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"batchwire {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """batchwire command line."""


def configure_logging(level: str, log_format: str = "text") -> None:
    """One stderr handler on the root logger: text or JSON lines, with trace ids inside spans."""
    from batchwire.telemetry.logs import configure_logging as configure

    configure(level, log_format)


@app.command()
def serve(
    model_repository: Annotated[
        Path | None,
        typer.Option(
            "--model-repository",
            envvar="BATCHWIRE_MODEL_REPOSITORY",
            help="Triton-layout model repository; default: the built-in example models.",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(envvar="BATCHWIRE_HOST", help="Address to bind.")
    ] = "0.0.0.0",
    port: Annotated[int, typer.Option(envvar="BATCHWIRE_GRPC_PORT", help="gRPC port.")] = 8001,
    max_message_mb: Annotated[
        int, typer.Option(help="Largest gRPC message accepted or sent, in MiB (max 2047).")
    ] = 2047,
    allow_pickled_models: Annotated[
        bool,
        typer.Option(help="Load pickled nn.Module files (they run arbitrary code when loaded)."),
    ] = False,
    intra_op_threads: Annotated[
        int | None,
        typer.Option(
            help="torch intra-op threads per CPU model instance (default: one for short "
            "batches, else the cores shared among the model's instances)."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(envvar="BATCHWIRE_LOG_LEVEL")] = "info",
    log_format: Annotated[
        LogFormat,
        typer.Option(
            envvar="BATCHWIRE_LOG_FORMAT",
            help="text, or json (one object per line, with trace_id/span_id inside a span).",
        ),
    ] = LogFormat.text,
    metrics_port: Annotated[
        int,
        typer.Option(
            envvar="BATCHWIRE_METRICS_PORT",
            help="Prometheus /metrics port on --host (0 disables it).",
        ),
    ] = 8002,
    trace_mode: Annotated[
        TraceMode | None,
        typer.Option(
            help="Tracing: off, ratio (--trace-rate of requests) or always; requests with a "
            "sampled traceparent are traced unless off. Default: OTEL_TRACES_SAMPLER, else off.",
        ),
    ] = None,
    trace_rate: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Fraction traced in ratio mode. Default: OTEL_TRACES_SAMPLER_ARG, else 0.1.",
        ),
    ] = None,
    trace_exporter: Annotated[
        TraceExporter | None,
        typer.Option(help="Span exporter. Default: OTEL_TRACES_EXPORTER, else otlp-grpc."),
    ] = None,
    trace_endpoint: Annotated[
        str | None,
        typer.Option(
            help="Collector address (host:port or URL). Default: OTEL_EXPORTER_OTLP_ENDPOINT, "
            "else the exporter's (localhost:4317 gRPC, localhost:4318 HTTP).",
        ),
    ] = None,
) -> None:
    """Serve a model repository (the built-in examples when none is given)."""
    from batchwire.server.app import BatchwireServer, new_event_loop
    from batchwire.server.settings import ServerSettings

    configure_logging(log_level, log_format.value)
    settings = ServerSettings(
        host=host,
        port=port,
        model_repository=model_repository,
        max_message_bytes=min(max_message_mb * 2**20, 2**31 - 1),
        allow_pickled_models=allow_pickled_models,
        intra_op_threads=intra_op_threads,
        metrics_port=metrics_port,
        trace_mode=trace_mode.value if trace_mode is not None else None,
        trace_rate=trace_rate,
        trace_exporter=trace_exporter.value if trace_exporter is not None else None,
        trace_endpoint=trace_endpoint,
    )
    server = BatchwireServer(settings)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await server.start()
        freeze_startup_objects()
        await stop.wait()
        logging.getLogger("batchwire").info("shutting down")
        await server.stop()

    loop = new_event_loop()
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()


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


@examples_app.command("export")
def export(
    dest: Annotated[Path, typer.Argument(help="Folder to write the repository into.")],
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Export only these (repeatable).")
    ] = None,
) -> None:
    """Write the built-in example models as a Triton-layout model repository."""
    from batchwire.examples.export import EXAMPLE_NAMES, export_examples

    unknown = sorted(set(model or ()) - set(EXAMPLE_NAMES))
    if unknown:
        raise typer.BadParameter(
            f"unknown example(s) {', '.join(unknown)}; expected some of {', '.join(EXAMPLE_NAMES)}",
            param_hint="--model",
        )
    names = export_examples(dest, model or None)
    for name in names:
        typer.echo(f"wrote {dest / name}")


def _register_optional_commands() -> None:
    from batchwire.clients.cli import register as register_client
    from batchwire.loadtest.cli import register as register_loadtest

    register_client(app)
    register_loadtest(app)


_register_optional_commands()


def main() -> None:
    """Entry point of the ``batchwire`` console script."""
    app()
