"""Run ``batchwire serve`` in a subprocess on a free loopback port (benchmarks, load tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc

from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``python -m batchwire serve`` on 127.0.0.1; a context manager that waits until ready."""

    def __init__(
        self, repository: Path | None, *extra_args: str, log_path: Path | None = None
    ) -> None:
        self.port = _free_port()
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
        ]
        if repository is not None:
            args += ["--model-repository", str(repository)]
        self._args = [*args, *extra_args]
        self._log_path = log_path
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> ServerProcess:
        log = open(self._log_path, "w") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            self._args, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()
        )
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"batchwire serve exited with {self._proc.returncode}")
                try:
                    if stub.ServerReady(pb.ServerReadyRequest(), timeout=1).ready:
                        return self
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"batchwire serve was not ready within {timeout} s")

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BareServerProcess(ServerProcess):
    """:mod:`batchwire.bench.bare_server` (no model work) on a free loopback port."""

    def __init__(self, log_path: Path | None = None) -> None:
        super().__init__(None, log_path=log_path)
        self._args = [sys.executable, "-m", "batchwire.bench.bare_server", "--port", str(self.port)]
