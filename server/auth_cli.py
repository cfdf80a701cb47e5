"""``batchwire auth``: make bearer tokens and the auth config lines that admit them.

The server stores only a token's SHA-256 (``token_sha256`` in the ``--auth-config``
file, see SECURITY.md); these commands print that line, so a token need never be
written into a file the server reads. They need neither torch nor OpenTelemetry:
they run from the client install.
"""

from __future__ import annotations

import hashlib
import secrets
import sys
from typing import Annotated

import typer

from batchwire.clients.cli import CONTEXT_SETTINGS, HelpCommand, HelpGroup
from batchwire.server.access import SCOPES

__all__ = ["auth_app"]

auth_app = typer.Typer(
    help="Bearer tokens for --auth-config principals.",
    no_args_is_help=True,
    cls=HelpGroup,
    rich_markup_mode=None,
    context_settings=CONTEXT_SETTINGS,
)


def token_sha256(token: str) -> str:
    """What ``token_sha256`` holds for ``token``: the hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(token.strip().encode()).hexdigest()


def _check_scope(scope: str) -> str:
    if scope in SCOPES or (scope.startswith("inference:") and len(scope) > len("inference:")):
        return scope
    raise typer.BadParameter(
        f"unknown scope {scope!r}; expected {', '.join(SCOPES)} or inference:<model>"
    )


@auth_app.command("new-token", cls=HelpCommand, context_settings=CONTEXT_SETTINGS)
def new_token(
    name: Annotated[str, typer.Argument(help="The principal's name (metrics and traces show it).")],
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            metavar="<scope>",
            parser=_check_scope,
            help="inference, inference:<model>, metadata, admin, health or reflection. Repeatable.",
        ),
    ] = None,
) -> None:
    """Make a random token; print it, then the [[principals]] entry that admits it."""
    token = secrets.token_urlsafe(32)
    scopes = ", ".join(f'"{s}"' for s in (scope or ["inference"]))
    typer.echo(f"# The token for '{name}': hand it to the caller; it is not stored anywhere.")
    typer.echo(token)
    typer.echo("# Add to the --auth-config file:")
    typer.echo("[[principals]]")
    typer.echo(f'name = "{name}"')
    typer.echo(f'token_sha256 = "{token_sha256(token)}"')
    typer.echo(f"scopes = [{scopes}]")


@auth_app.command("hash-token", cls=HelpCommand, context_settings=CONTEXT_SETTINGS)
def hash_token() -> None:
    """Read a token on stdin (so it stays out of the shell history); print its token_sha256."""
    token = sys.stdin.readline().strip()
    if not token:
        typer.echo("batchwire: expected a token on stdin, got nothing", err=True)
        raise typer.Exit(2)
    typer.echo(token_sha256(token))
