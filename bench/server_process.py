"""Servers the benchmarks start: ``batchwire serve`` and the bare gRPC server, in subprocesses.

:class:`ServerProcess`, :func:`free_port` and :func:`terminate` are
:mod:`batchwire.serve_process`'s, which the load test and the tests share;
:class:`BareServerProcess` and :func:`cpu_seconds` are the benchmarks' own.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from batchwire.serve_process import ServerProcess, free_port, terminate

__all__ = ["BareServerProcess", "ServerProcess", "cpu_seconds", "free_port", "terminate"]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid``, all its threads (None off Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BareServerProcess(ServerProcess):
    """:mod:`batchwire.bench.bare_server` (no model work) on a free loopback port."""

    def __init__(self, log_path: Path | None = None) -> None:
        super().__init__(None, log_path=log_path)
        self.command = [
            sys.executable, "-m", "batchwire.bench.bare_server", "--port", str(self.port)
        ]  # fmt: skip
