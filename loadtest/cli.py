"""``batchwire loadtest``: Locust load test with latency targets and a report.

``register(app)`` adds the command to the main ``batchwire`` typer app;
``python -m batchwire.loadtest ...`` runs it standalone.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["loadtest", "main", "register"]


def loadtest(
    host: Annotated[
        str | None,
        typer.Option(
            help="Server to load, host:port on this machine (127.0.0.0/8, ::1, localhost). "
            "Default: start one (on --model-repository, else the built-in example models).",
        ),
    ] = None,
    slo: Annotated[
        Path | None,
        typer.Option(help="SLO file (TOML). Default: the packaged loadtest/slo.toml."),
    ] = None,
    users: Annotated[int, typer.Option(help="Concurrent Locust users at full load.")] = 4,
    spawn_rate: Annotated[
        float, typer.Option(help="Users started per second while ramping up.")
    ] = 4.0,
    duration: Annotated[
        str, typer.Option(help="Run time including the ramp-up: 30s, 2m, 1m30s.")
    ] = "30s",
    warmup: Annotated[
        str | None,
        typer.Option(
            help="Leading time left out of the SLO evaluation. Default: the ramp-up time "
            "(users / spawn rate)."
        ),
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(
            envvar="BATCHWIRE_LOADTEST_MODELS",
            help="Served models to load, comma separated, optional weights (mlp:3,scaler:1). "
            "Default: mlp,text, or with --model-repository every model it serves.",
        ),
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            envvar="BATCHWIRE_LOADTEST_MODE",
            help="unary: ModelInfer calls; stream: requests on ModelStreamInfer streams.",
        ),
    ] = "unary",
    out: Annotated[
        Path, typer.Option(help="Folder for report.html, the PNGs, Locust's CSVs and logs.")
    ] = Path("loadtest-report"),
    workers: Annotated[
        int,
        typer.Option(help="Run Locust distributed: a master plus this many worker processes."),
    ] = 0,
    metrics_url: Annotated[
        str | None,
        typer.Option(
            help="Server Prometheus metrics to scrape during the run, e.g. "
            "http://127.0.0.1:8002/metrics (optional)."
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds before a request counts as failed.")
    ] = 10.0,
    model_repository: Annotated[
        Path | None,
        typer.Option(
            help="Model repository for the server this command starts (not with --host).",
        ),
    ] = None,
    shape: Annotated[
        list[str] | None,
        typer.Option(
            "--shape",
            help="NAME:d1,d2,... dims of input NAME without the batch dimension "
            "(perf_analyzer's --shape); required for variable (-1) dims. Repeatable.",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Rows per request for batching models (max_batch_size > 0). "
            "Default: 1 (the examples: 1..4 at random).",
        ),
    ] = None,
    input_data: Annotated[
        list[str] | None,
        typer.Option(
            "--input-data",
            help="[MODEL=]FILE: real inputs instead of random ones; .npz (one array per "
            "input, as sent) or perf_analyzer's JSON. MODEL= is needed when loading several "
            "models. Repeatable.",
        ),
    ] = None,
) -> None:
    """Load the server with Locust over gRPC, check the latency targets, write a report.

    Any served model can be loaded: its requests are generated from its
    metadata and config (random data, --shape for variable dims, --batch-size)
    or read from --input-data, as Triton's perf_analyzer does.

    Exit code 0 when every target is met, 1 when one is missed (each printed as
    FAIL with the measured value), 2 for bad options or SLO file (found before
    any load is sent), 3 when the run itself failed.
    """
    from batchwire.loadtest.runner import (
        EXIT_RUN_ERROR,
        EXIT_USAGE,
        LoadTestError,
        LoadTestOptions,
        UsageError,
        plan,
        run,
    )

    options = LoadTestOptions(
        host=host,
        slo=slo,
        users=users,
        spawn_rate=spawn_rate,
        duration=duration,
        warmup=warmup,
        models=models,
        mode=mode,
        out=out,
        workers=workers,
        metrics_url=metrics_url,
        timeout=timeout,
        model_repository=model_repository,
        shapes=list(shape or ()),
        batch_size=batch_size,
        input_data=list(input_data or ()),
    )
    try:
        validated = plan(options)
    except UsageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    if importlib.util.find_spec("locust") is None:
        typer.echo("error: Locust is not installed; pip install 'batchwire[loadtest]'", err=True)
        raise typer.Exit(EXIT_USAGE)
    try:
        outcome = run(options, validated)
    except UsageError as exc:
        # Found once the server answered (the models' metadata): still before any load.
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except LoadTestError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_RUN_ERROR) from None
    for line in outcome.evaluation.lines():
        typer.echo(line)
    verdict = "PASS" if outcome.evaluation.passed else "FAIL"
    failed = len(outcome.evaluation.failures())
    checked = sum(len(result.checks) for result in outcome.evaluation.results)
    if failed:
        summary = f"{verdict}: {failed} of {checked} target(s) missed"
    elif checked:
        summary = f"{verdict}: all {checked} target(s) met"
    else:
        summary = f"{verdict}: no targets for these models in the SLO file"
    typer.echo(f"{summary}; report: {outcome.report}")
    raise typer.Exit(outcome.exit_code)


def register(app: typer.Typer) -> None:
    """Add ``loadtest`` to the ``batchwire`` command line."""
    app.command("loadtest")(loadtest)


def main() -> None:
    """``python -m batchwire.loadtest [options]``: the loadtest command on its own."""
    typer.run(loadtest)
