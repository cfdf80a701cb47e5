"""Run ``batchwire serve`` in a subprocess on a free loopback port (benchmarks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from batchwire.clients.readiness import ServerNotReadyError, wait_until_ready


def terminate(proc: subprocess.Popen, timeout: float) -> None:
    """Stop ``proc`` if it still runs: SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``python -m batchwire serve`` on 127.0.0.1; a context manager that waits until ready."""

    def __init__(
        self, repository: Path | None, *extra_args: str, log_path: Path | None = None
    ) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        args = [
            sys.executable,
            "-m",
            "batchwire",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            # Benchmarks start several servers; the metrics endpoint is not what they measure.
            "--metrics-port",
            "0",
        ]
        if repository is not None:
            args += ["--model-repository", str(repository)]
        self._args = [*args, *extra_args]
        self._log_path = log_path
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int | None:
        """The server process's id (None before :meth:`start`)."""
        return None if self._proc is None else self._proc.pid

    def start(self, timeout: float = 120.0) -> ServerProcess:
        self._log = open(self._log_path, "w") if self._log_path else None  # noqa: SIM115
        self._proc = subprocess.Popen(
            self._args,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
        )
        try:
            wait_until_ready(self.address, timeout, self._proc)
        except ServerNotReadyError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 30 s) and close its log."""
        if self._proc is not None:
            terminate(self._proc, 30)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BareServerProcess(ServerProcess):
    """:mod:`batchwire.bench.bare_server` (no model work) on a free loopback port."""

    def __init__(self, log_path: Path | None = None) -> None:
        super().__init__(None, log_path=log_path)
        self._args = [sys.executable, "-m", "batchwire.bench.bare_server", "--port", str(self.port)]
