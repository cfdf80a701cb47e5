"""A Locust User that drives batchwire over gRPC with the generated stubs.

Importing this module makes gRPC gevent-compatible
(``grpc.experimental.gevent.init_gevent()``), as Locust's documentation
requires before any channel is created; import it only in Locust processes.

Every inference fires one Locust request event: ``request_type`` ``"grpc"``
(unary ``ModelInfer``) or ``"grpc-stream"`` (one request on a bidirectional
``ModelStreamInfer`` stream, matched to its response by request id), ``name``
the model, ``response_time`` in ms (float), ``response_length`` the serialized
response size, and on failure an :class:`InferenceFailure` whose message starts
with the gRPC status code name (``UNAVAILABLE: ...``; ``STREAM_ERROR: ...``
for an error message answered inside a stream).
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import gevent
import grpc
import grpc.experimental.gevent as grpc_gevent
from gevent.event import AsyncResult
from gevent.queue import Queue
from locust import User, constant, task

from batchwire.loadtest.hosts import normalize_target
from batchwire.loadtest.workloads import (
    WORKLOADS,
    next_request_id,
    parse_weighted_models,
    pick,
    read_workloads,
    resolve_workloads,
)
from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc

grpc_gevent.init_gevent()

MODES = ("unary", "stream")
#: Status name recorded for an ``error_message`` answered inside a stream.
STREAM_ERROR = "STREAM_ERROR"


class InferenceFailure(Exception):
    """A failed inference; ``str()`` starts with the status code name."""

    def __init__(self, code: str, details: str = "") -> None:
        details = " ".join(details.split())[:200]
        super().__init__(f"{code}: {details}" if details else code)
        self.code = code


def status_of(exception: BaseException | None) -> str | None:
    """The status code name a request event's exception stands for (None: success)."""
    if exception is None:
        return None
    if isinstance(exception, InferenceFailure):
        return exception.code
    if isinstance(exception, grpc.RpcError) and hasattr(exception, "code"):
        name: str = exception.code().name
        return name
    return type(exception).__name__


def _rpc_failure(error: grpc.RpcError) -> InferenceFailure:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    return InferenceFailure(code.name if code is not None else "UNKNOWN", details or "")


class UnaryTransport:
    """One ``ModelInfer`` call per request."""

    request_type = "grpc"

    def __init__(
        self, stub: pb_grpc.GRPCInferenceServiceStub, fire: Callable[..., None], timeout: float
    ):
        self._stub = stub
        self._fire = fire
        self._timeout = timeout

    def infer(self, name: str, request: pb.ModelInferRequest) -> None:
        start = time.perf_counter()
        exception: Exception | None = None
        length = 0
        try:
            response = self._stub.ModelInfer(request, timeout=self._timeout)
            length = response.ByteSize()
        except grpc.RpcError as error:
            exception = _rpc_failure(error)
        self._fire(
            request_type=self.request_type,
            name=name,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=length,
            exception=exception,
            context={"request_id": request.id},
        )

    def close(self) -> None:
        pass


_CLOSE = object()


class StreamTransport:
    """Requests on one long-lived bidirectional ``ModelStreamInfer`` stream.

    A reader greenlet takes responses as they come (in completion order),
    finds the request by id, and fires its event with the latency measured at
    arrival. ``infer`` waits for that (closed loop: one request in flight per
    user, like the unary mode). A broken stream fails its pending requests
    with the stream's status code and is reopened by the next request.
    """

    request_type = "grpc-stream"

    def __init__(
        self, stub: pb_grpc.GRPCInferenceServiceStub, fire: Callable[..., None], timeout: float
    ):
        self._stub = stub
        self._fire = fire
        self._timeout = timeout
        self._queue: Queue | None = None
        self._call: Any = None
        self._reader: gevent.Greenlet | None = None
        #: request id -> (model name, perf_counter at send, done)
        self._pending: dict[str, tuple[str, float, AsyncResult]] = {}

    def _open(self) -> None:
        queue: Queue = Queue()
        self._queue = queue
        self._call = self._stub.ModelStreamInfer(iter(queue.get, _CLOSE))
        self._reader = gevent.spawn(self._read, self._call, queue)

    def _complete(
        self,
        request_id: str,
        exception: Exception | None,
        length: int = 0,
        now: float | None = None,
    ) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is None:
            return  # unknown id, or already timed out
        name, start, done = entry
        now = time.perf_counter() if now is None else now
        self._fire(
            request_type=self.request_type,
            name=name,
            response_time=(now - start) * 1000.0,
            response_length=length,
            exception=exception,
            context={"request_id": request_id},
        )
        done.set(exception is None)

    def _read(self, call: Iterator[pb.ModelStreamInferResponse], queue: Queue) -> None:
        try:
            for response in call:
                now = time.perf_counter()
                request_id = response.infer_response.id
                if response.error_message:
                    self._complete(
                        request_id, InferenceFailure(STREAM_ERROR, response.error_message), now=now
                    )
                else:
                    self._complete(request_id, None, response.ByteSize(), now)
            failure = InferenceFailure("UNAVAILABLE", "stream closed by the server")
        except grpc.RpcError as error:
            failure = _rpc_failure(error)
        queue.put(_CLOSE)  # ends gRPC's request-iterator consumer for this stream
        if self._call is not call:
            # We closed it (the user is stopping): whatever is still pending was
            # abandoned by the end of the test, not failed by the server.
            for _, _, done in self._pending.values():
                done.set(False)
            self._pending.clear()
            return
        self._call = None
        for request_id in list(self._pending):
            self._complete(request_id, failure)

    def infer(self, name: str, request: pb.ModelInferRequest) -> None:
        if self._call is None:
            self._open()
        done = AsyncResult()
        self._pending[request.id] = (name, time.perf_counter(), done)
        assert self._queue is not None
        self._queue.put(request)
        try:
            done.get(timeout=self._timeout)
        except gevent.Timeout:
            self._complete(
                request.id, InferenceFailure("DEADLINE_EXCEEDED", "no response on the stream")
            )

    def close(self) -> None:
        call, self._call = self._call, None
        if self._queue is not None:
            self._queue.put(_CLOSE)
        if call is not None:
            call.cancel()
        if self._reader is not None:
            self._reader.join(timeout=2)


def load_workloads(path: str) -> dict[str, list[pb.ModelInferRequest]]:
    """The pools of a workloads file (``batchwire loadtest`` writes one), read once per process."""
    pools = _workload_files.get(path)
    if pools is None:
        pools = _workload_files[path] = read_workloads(path)
    return pools


_workload_files: dict[str, dict[str, list[pb.ModelInferRequest]]] = {}


class BatchwireUser(User):
    """Sends pre-encoded inference requests for the chosen models.

    Options (Locust custom arguments, see ``batchwire/loadtest/locustfile.py``,
    or the environment when run outside of Locust's parser):
    ``--batchwire-models`` / ``BATCHWIRE_LOADTEST_MODELS`` ("mlp,text", optionally
    weighted "mlp:3,text:1"), ``--batchwire-mode`` / ``BATCHWIRE_LOADTEST_MODE``
    (unary | stream), ``--batchwire-timeout`` (seconds per request),
    ``--batchwire-workloads`` / ``BATCHWIRE_LOADTEST_WORKLOADS`` (the requests
    ``batchwire loadtest`` prepared; without it the examples use their
    hand-made workloads and any other model gets random inputs generated from
    its metadata, which needs no ``--shape``).
    The host is ``127.0.0.1:8001`` style (``grpc://`` accepted), loopback only.
    """

    abstract = True
    wait_time = constant(0)
    #: Fixed transport mode for subclasses; None reads the option.
    mode: ClassVar[str | None] = None
    _shared_pools: ClassVar[dict[str, list[pb.ModelInferRequest]]] = {}

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        options = environment.parsed_options
        models = getattr(options, "batchwire_models", None) or os.environ.get(
            "BATCHWIRE_LOADTEST_MODELS", ""
        )
        mode = self.mode or getattr(options, "batchwire_mode", None)
        mode = mode or os.environ.get("BATCHWIRE_LOADTEST_MODE") or "unary"
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected unary or stream")
        timeout = float(getattr(options, "batchwire_timeout", None) or 10.0)
        self._workloads_file = getattr(options, "batchwire_workloads", None) or os.environ.get(
            "BATCHWIRE_LOADTEST_WORKLOADS", ""
        )
        self.weights = parse_weighted_models(models)
        self._models = list(self.weights)
        self._cum_weights = list(itertools.accumulate(self.weights.values()))
        self.target = normalize_target(self.host or "127.0.0.1:8001")
        self._pools = {model: self.pool(model) for model in self._models}
        self.channel = grpc.insecure_channel(
            self.target,
            options=[
                ("grpc.max_send_message_length", 64 * 2**20),
                ("grpc.max_receive_message_length", 64 * 2**20),
            ],
        )
        stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        transport = StreamTransport if mode == "stream" else UnaryTransport
        self.transport = transport(stub, environment.events.request.fire, timeout)
        self._id_prefix = f"{os.getpid()}-{id(self):x}"

    def pool(self, model: str) -> list[pb.ModelInferRequest]:
        """The pre-encoded requests for ``model``, read or built once per process."""
        if self._workloads_file:
            pools = load_workloads(self._workloads_file)
            if model not in pools:
                raise ValueError(
                    f"model '{model}' is not in {self._workloads_file} "
                    f"(it has {', '.join(pools) or 'none'})"
                )
            return pools[model]
        pool = self._shared_pools.get(model)
        if pool is None:
            if model in WORKLOADS:
                workload = WORKLOADS[model]
            else:
                # Locust on its own (web UI): ask the server what the model takes.
                workload = resolve_workloads(self.target, [model])[model]
            pool = self._shared_pools[model] = workload.build_pool(seed=os.getpid())
        return pool

    @task
    def infer(self) -> None:
        """One request to a model drawn by weight, with a random pre-encoded input."""
        model = random.choices(self._models, cum_weights=self._cum_weights)[0]
        self.infer_model(model)

    def infer_model(self, model: str) -> None:
        request = pick(self._pools[model], next_request_id(self._id_prefix))
        self.transport.infer(model, request)

    def on_stop(self) -> None:
        self.transport.close()
        self.channel.close()
