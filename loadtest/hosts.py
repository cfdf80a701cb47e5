"""Load targets: ``host:port`` strings, loopback only."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost",)


class NotLoopbackError(ValueError):
    """The target is not this machine's loopback interface."""


def split_target(target: str) -> tuple[str, int | None]:
    """``"127.0.0.1:8001"``, ``"grpc://localhost:8001"``, ``"[::1]:8001"`` -> (host, port)."""
    text = target.strip()
    if "://" not in text:
        text = "grpc://" + text
    parts = urlsplit(text)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"expected host:port, got {target!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port in {target!r}") from exc
    host = parts.hostname or ""
    if not host:
        raise ValueError(f"no host in {target!r}")
    return host, port


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def normalize_target(target: str, default_port: int = 8001) -> str:
    """A gRPC dial target ``host:port`` for a loopback ``target``; NotLoopbackError otherwise."""
    host, port = split_target(target)
    if not is_loopback(host):
        raise NotLoopbackError(
            f"refusing to send load to {host!r}: load tests only target this machine "
            "(127.0.0.0/8, ::1 or localhost)"
        )
    port = default_port if port is None else port
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"
