"""``python -m batchwire serve`` in a subprocess on free loopback ports.

The one way the benchmarks, ``batchwire loadtest`` and the tests start a server
process of their own. This module imports neither torch nor the server, so a
client-only install can import it; starting a server still needs the ``server``
extra in this interpreter (without it ``serve`` exits at once, and :meth:`start`
says so).

Ports: :func:`free_port` returns a port that is free when it is asked; the server
binds it a moment later, so another process may take it in between. The start then
fails (the server exits saying which port it could not bind) rather than serving
somewhere else.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batchwire.clients.readiness import ServerNotReadyError, wait_until_ready

__all__ = ["ServerNotReadyError", "ServerProcess", "free_port", "log_tail", "terminate"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def terminate(process: subprocess.Popen[Any], timeout: float) -> None:
    """Stop ``process`` if it still runs: SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def log_tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of the text file ``path`` ("" when it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ServerProcess:
    """``python -m batchwire serve`` on 127.0.0.1 and a free port, until :meth:`stop`.

    Args:
        repository: the model repository (None: the server's default, the examples).
        extra_args: further ``serve`` options.
        metrics: serve Prometheus metrics on another free port (:attr:`metrics_url`);
            off (``--metrics-port 0``) otherwise, so that two servers never race for the
            default port.
        log_path: the file that gets the server's stdout and stderr (else discarded);
            a failed start then quotes its last lines.
        cwd, env: the process's working directory and environment (default: this
            process's), e.g. to run another build of batchwire through ``PYTHONPATH``.

    Ports are chosen at construction; :meth:`start` (or ``with``) launches the process
    and returns once ``ServerReady`` says ready. Not thread-safe: one owner starts and
    stops it.
    """

    def __init__(
        self,
        repository: Path | None = None,
        *extra_args: str,
        metrics: bool = False,
        log_path: Path | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        #: ``127.0.0.1:<port>``, the gRPC address.
        self.address = f"127.0.0.1:{self.port}"
        metrics_port = free_port() if metrics else 0
        #: ``http://127.0.0.1:<port>/metrics``, or None when metrics are off.
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics" if metrics else None
        #: The command line :meth:`start` runs (a subclass may replace it before then).
        self.command = [
            sys.executable, "-m", "batchwire", "serve",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--metrics-port", str(metrics_port),
        ]  # fmt: skip
        if repository is not None:
            self.command += ["--model-repository", str(repository.resolve())]
        self.command += extra_args
        self.log_path = log_path
        self._cwd = cwd
        self._env = None if env is None else dict(env)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The server process's id (None before :meth:`start`)."""
        return None if self._process is None else self._process.pid

    def start(self, timeout: float = 120.0) -> ServerProcess:
        """Launch the server and wait until it is ready; returns ``self``.

        Raises :class:`ServerNotReadyError` (after stopping the process) when it is not
        ready within ``timeout`` seconds or exits first.
        """
        log = self.log_path.open("wb") if self.log_path is not None else None
        try:
            self._process = subprocess.Popen(
                self.command,
                cwd=self._cwd,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log if log is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
        finally:
            if log is not None:
                log.close()  # the child writes through its own descriptor
        try:
            wait_until_ready(self.address, timeout, self._process)
        except ServerNotReadyError as exc:
            self.stop()
            if self.log_path is None:
                raise
            tail = log_tail(self.log_path)
            raise ServerNotReadyError(
                f"{exc}\n--- {self.log_path} (last lines) ---\n{tail}"
            ) from exc
        return self

    def send_signal(self, signal: int) -> None:
        """Send ``signal`` to the server process (SIGTERM: a graceful shutdown)."""
        if self._process is None:
            raise RuntimeError("the server process was not started")
        self._process.send_signal(signal)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; its exit status (raises TimeoutExpired after ``timeout``)."""
        if self._process is None:
            raise RuntimeError("the server process was not started")
        return self._process.wait(timeout=timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server: SIGTERM (it drains), then SIGKILL after ``timeout`` seconds.

        Idempotent; does nothing before :meth:`start`.
        """
        if self._process is not None:
            terminate(self._process, timeout)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
