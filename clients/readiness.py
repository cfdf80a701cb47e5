"""Wait until a server answers ServerReady (for tools that start or target one)."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import grpc

from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc


class ServerNotReadyError(RuntimeError):
    """The server did not become ready in time, or its process exited first."""


def wait_until_ready(
    target: str,
    timeout: float,
    process: subprocess.Popen[Any] | None = None,
    poll_s: float = 0.25,
) -> None:
    """Poll ``ServerReady`` at ``target`` until it says ready.

    Raises :class:`ServerNotReadyError` after ``timeout`` seconds (naming the last
    answer) or as soon as ``process``, the server's own process if given, exits.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise ServerNotReadyError(
                    f"server exited with code {process.returncode} before it was ready"
                )
            try:
                if stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready:
                    return
                last = "ServerReady answered ready=false"
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            time.sleep(poll_s)
    raise ServerNotReadyError(f"server at {target} not ready after {timeout:g} s ({last})")
