"""Servers the benchmarks start: ``batchwire serve`` and the bare gRPC server, in subprocesses.

:class:`ServerProcess`, :func:`free_port` and :func:`terminate` are
:mod:`batchwire.serve_process`'s, which the load test and the tests share;
:class:`BareServerProcess` is the benchmarks' own.
"""

from __future__ import annotations

import sys
from pathlib import Path

from batchwire.serve_process import ServerProcess, free_port, terminate

__all__ = ["BareServerProcess", "ServerProcess", "free_port", "terminate"]


class BareServerProcess(ServerProcess):
    """:mod:`batchwire.bench.bare_server` (no model work) on a free loopback port."""

    def __init__(self, log_path: Path | None = None) -> None:
        super().__init__(None, log_path=log_path)
        self.command = [
            sys.executable, "-m", "batchwire.bench.bare_server", "--port", str(self.port)
        ]  # fmt: skip
