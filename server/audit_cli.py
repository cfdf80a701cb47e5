"""``batchwire audit``: verify and read the audit log that ``serve --audit-log`` writes.

``verify`` checks every file of the log directory (hash chain, order, missing files,
checkpoint signatures: :mod:`batchwire.telemetry.audit_verify`) and exits 0 when all
is well, 1 when something is wrong (each problem printed as ``FILE:LINE: KIND:
DETAIL``), 2 for unusable arguments. ``show`` prints the request records that match
its filters. Neither needs torch nor the server's libraries other than
``cryptography`` (for ``--public-key``); the telemetry modules they use are imported
when the command runs, so ``batchwire --help`` stays light.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from batchwire.clients.cli import CONTEXT_SETTINGS, HelpCommand, HelpGroup

if TYPE_CHECKING:
    from datetime import datetime

    from batchwire.telemetry.audit_verify import VerifyReport

__all__ = ["audit_app"]

audit_app = typer.Typer(
    help="Verify and read the audit log (serve --audit-log).",
    no_args_is_help=True,
    cls=HelpGroup,
    rich_markup_mode=None,
    context_settings=CONTEXT_SETTINGS,
)

FORMATS = ("table", "json")


def _directory(path: Path) -> Path:
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise typer.BadParameter(
            f"expected an audit log directory, got {path}, which {what}", param_hint="PATH"
        )
    return path


def _time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    from batchwire.telemetry.audit_records import parse_rfc3339

    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def summary(report: VerifyReport) -> str:
    """One line: what was checked."""
    signatures = "verified" if report.signatures_checked else "not checked: no --public-key"
    return (
        f"{report.files} files, {report.records} records ({report.requests} requests), "
        f"{report.checkpoints} checkpoints, {report.signed} signed ({signatures}); "
        f"{report.unsigned_tail} records after the last checkpoint"
    )


@audit_app.command("verify", cls=HelpCommand, context_settings=CONTEXT_SETTINGS)
def verify(
    path: Annotated[Path, typer.Argument(help="The audit log directory.", show_default=False)],
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            metavar="<pem>",
            help="Ed25519 public key (PEM) to check the checkpoint signatures with: "
            "openssl pkey -in KEY -pubout writes it from the signing key.",
        ),
    ] = None,
) -> None:
    """Check the chain, order, files and signatures of an audit log.

    Exit status: 0 when the log is intact, 1 when a problem was found (each printed as
    FILE:LINE: KIND: DETAIL), 2 for unusable arguments.
    """
    from batchwire.telemetry.audit_verify import load_public_key, verify_log

    directory = _directory(path)
    key = None
    if public_key is not None:
        try:
            key = load_public_key(public_key)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--public-key") from None
    try:
        report = verify_log(directory, key)
    except OSError as exc:
        typer.echo(f"batchwire: cannot read the audit log: {exc}", err=True)
        raise typer.Exit(1) from None
    if report.ok:
        typer.echo(f"OK: {summary(report)}")
        return
    for problem in report.problems:
        typer.echo(f"{directory / problem.file}:{problem.line}: {problem.kind}: {problem.detail}")
    typer.echo(f"FAILED: {len(report.problems)} problems; {summary(report)}", err=True)
    raise typer.Exit(1)


@audit_app.command("show", cls=HelpCommand, context_settings=CONTEXT_SETTINGS)
def show(
    path: Annotated[Path, typer.Argument(help="The audit log directory.", show_default=False)],
    model: Annotated[
        str | None, typer.Option("--model", metavar="<name>", help="Only this model.")
    ] = None,
    version: Annotated[
        str | None, typer.Option("--version", metavar="<version>", help="Only this version.")
    ] = None,
    principal: Annotated[
        str | None,
        typer.Option("--principal", metavar="<name>", help="Only this caller (auth principal)."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="<time>",
            help="Only requests received at or after this ISO 8601 time (UTC unless it "
            "names an offset), e.g. 2026-12-07T23:00:00Z.",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", metavar="<time>", help="Only requests received before this time."),
    ] = None,
    output: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="<table|json>",
            help="table: time, model, version, principal, code, request id; "
            "json: the records, one JSON object a line.",
        ),
    ] = "table",
) -> None:
    """Print the request records of an audit log, filtered (verify checks it)."""
    from batchwire.telemetry.audit_verify import read_records

    directory = _directory(path)
    if output not in FORMATS:
        raise typer.BadParameter(
            f"expected one of {', '.join(FORMATS)}, got {output!r}", param_hint="--format"
        )
    records = read_records(
        directory,
        model=model,
        version=version,
        principal=principal,
        since=_time(since, "--since"),
        until=_time(until, "--until"),
    )
    if output == "json":
        for record in records:
            typer.echo(json.dumps(record, separators=(",", ":")))
        return
    typer.echo(f"{'RECEIVED':<27} {'MODEL':<16} {'VERSION':<7} {'PRINCIPAL':<12} {'CODE':<18} ID")
    for record in records:
        typer.echo(
            f"{record.get('received', '')!s:<27} {record.get('model', '')!s:<16} "
            f"{record.get('version') or '-'!s:<7} {record.get('principal') or '-'!s:<12} "
            f"{record.get('code', '')!s:<18} {record.get('request_id') or '-'}"
        )
