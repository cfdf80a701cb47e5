"""The standard ``grpc.health.v1.Health`` service, kept in step with the model registry.

Service names: ``""`` (the whole server: SERVING once every model is ready),
``inference.GRPCInferenceService`` (same status as ``""``), and one entry per
model name (SERVING while the model has a ready version).

What clients see (:class:`HealthServicer`):

* ``Check(service)`` answers the status last set for ``service``; a service
  that was never set fails with NOT_FOUND, naming it.
* ``List`` answers every service that was ever set, with its status, in one
  response.
* ``Watch(service)`` first sends the current status (``SERVICE_UNKNOWN`` for a
  service never set, and the stream stays open), then one message each time
  the status changes. Setting a status to the value it already has sends
  nothing. A reader slower than the changes gets the newest status, never a
  stale one, so intermediate flips may be skipped. The stream ends (status OK)
  right after graceful shutdown has sent ``NOT_SERVING``, or when the client
  cancels.
* Graceful shutdown sets every known service ``NOT_SERVING`` and ignores every
  later change, so a Kubernetes gRPC probe sees the pod go unready while
  in-flight requests drain.

Concurrency: everything here runs on the server's event loop. The status table
and the watchers' events are plain (not thread-safe) objects; code on another
thread must hop to the loop (``loop.call_soon_threadsafe`` or
``asyncio.run_coroutine_threadsafe``) before changing a status.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc

from batchwire.protos import health_pb2, health_pb2_grpc
from batchwire.server.status import Undecodable, capped

if TYPE_CHECKING:
    from batchwire.server.registry import ModelRegistry

    ServingStatus = health_pb2.HealthCheckResponse.ServingStatus

INFERENCE_SERVICE = "inference.GRPCInferenceService"
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.UNKNOWN
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class _Watcher:
    """One open Watch stream: the newest status for it, and a flag that it changed."""

    __slots__ = ("changed", "status")

    def __init__(self, status: ServingStatus) -> None:
        self.status = status
        self.changed = asyncio.Event()

    def update(self, status: ServingStatus) -> None:
        self.status = status
        self.changed.set()


class HealthServicer(health_pb2_grpc.HealthServicer):
    """An asyncio ``grpc.health.v1.Health`` servicer; see the module docstring for the rules.

    Event loop only: :meth:`set` and :meth:`enter_graceful_shutdown` must be
    called on the loop that serves the RPCs.
    """

    def __init__(self) -> None:
        self._statuses: dict[str, ServingStatus] = {}
        self._watchers: dict[str, set[_Watcher]] = {}
        self._shutting_down = False

    @property
    def shutting_down(self) -> bool:
        """True once :meth:`enter_graceful_shutdown` has run."""
        return self._shutting_down

    def get(self, service: str) -> ServingStatus | None:
        """The status of ``service``, or None when it was never set."""
        return self._statuses.get(service)

    def set(self, service: str, status: ServingStatus) -> None:
        """Publish ``status`` for ``service`` and wake its watchers if it changed.

        Ignored after graceful shutdown (the service stays NOT_SERVING).
        Raises ValueError for SERVICE_UNKNOWN (a Watch-only answer) or a value
        that is not a ServingStatus.
        """
        if status not in (UNKNOWN, SERVING, NOT_SERVING):
            raise ValueError(
                f"health status for '{service}' must be UNKNOWN, SERVING or NOT_SERVING, "
                f"got {status!r}"
            )
        if self._shutting_down:
            return
        self._publish(service, status)

    def enter_graceful_shutdown(self) -> None:
        """Set every known service NOT_SERVING, freeze the table, end every Watch stream.

        Idempotent. Watch streams end after sending NOT_SERVING rather than
        staying open until the server stops, because an open stream would hold
        ``server.stop(grace)`` for its whole grace period.
        """
        if self._shutting_down:
            return
        for service in list(self._statuses):
            self._publish(service, NOT_SERVING)
        self._shutting_down = True
        # Watchers of services that were never set have nothing new to send, but they
        # must wake up to see the shutdown and end their stream.
        for watchers in self._watchers.values():
            for watcher in watchers:
                watcher.changed.set()

    def _publish(self, service: str, status: ServingStatus) -> None:
        if self._statuses.get(service) == status:
            return
        self._statuses[service] = status
        for watcher in self._watchers.get(service, ()):
            watcher.update(status)

    # RPCs --------------------------------------------------------------

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        """The status of ``request.service``; NOT_FOUND when it was never set."""
        await _decoded(request, context)
        status = self._statuses.get(request.service)
        if status is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                capped(
                    f"health: unknown service '{request.service}' (no health status is "
                    "reported for it; services are '', the inference service and each model "
                    "name)"
                ),
            )
        return health_pb2.HealthCheckResponse(status=status)

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        """Every service ever set and its status.

        No size limit is applied (the proto allows RESOURCE_EXHAUSTED): the
        table holds two entries plus one per model.
        """
        await _decoded(request, context)
        response = health_pb2.HealthListResponse()
        for service, status in self._statuses.items():
            response.statuses[service].status = status
        return response

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> None:
        """Stream the status of ``request.service``: now, then on every change.

        Written with ``context.write`` rather than as an async generator so that
        a cancelled stream raises CancelledError right here and unregisters its
        watcher at once, not whenever the suspended generator is collected.
        """
        await _decoded(request, context)
        service = request.service
        watcher = _Watcher(self._statuses.get(service, SERVICE_UNKNOWN))
        watchers = self._watchers.setdefault(service, set())
        watchers.add(watcher)
        try:
            sent: ServingStatus | None = None
            while True:
                # Clear before reading: a change made while we write sets the event
                # again, so the next wait returns at once instead of missing it.
                watcher.changed.clear()
                status = watcher.status
                if status != sent:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    sent = status
                if self._shutting_down and watcher.status == sent:
                    return
                await watcher.changed.wait()
        finally:
            watchers.discard(watcher)
            if not watchers and self._watchers.get(service) is watchers:
                del self._watchers[service]


async def _decoded(request: object, context: grpc.aio.ServicerContext) -> None:
    """INVALID_ARGUMENT for bytes that did not decode (the server registers these
    methods through ``status.DecodeChecked``), instead of gRPC's UNKNOWN."""
    if type(request) is Undecodable:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)


class HealthReporter:
    """Owns the health servicer and keeps it in step with the registry (event loop only).

    Rules:

    * From construction until the first :meth:`refresh`, ``""`` and the
      inference service are NOT_SERVING (the server is starting), whatever
      single models do, so probes never see a half-loaded server as SERVING.
    * After that, every model load or unload the registry reports sets that
      model's status and then ``""`` / the inference service to
      ``registry.all_ready``. The registry calls its listeners on the event
      loop after the change, so a Check made after RepositoryModelUnload
      returns already sees NOT_SERVING.
    * :meth:`shutdown` enters graceful shutdown (see :class:`HealthServicer`).
    """

    def __init__(self, registry: ModelRegistry) -> None:
        self.servicer = HealthServicer()
        self._registry = registry
        self._started = False
        # Known from the start, so a probe racing the first refresh sees NOT_SERVING
        # rather than NOT_FOUND.
        self._set_server_status(False)
        registry.add_listener(self._on_model_state)

    async def set_server(self, serving: bool) -> None:
        """Set ``""`` and the inference service to SERVING or NOT_SERVING."""
        self._set_server_status(serving)

    async def refresh(self) -> None:
        """Publish the current state of every model, then of the server (ends start-up)."""
        for served in self._registry.index():
            self.servicer.set(
                served.name, SERVING if self._model_ready(served.name) else NOT_SERVING
            )
        self._started = True
        self._set_server_status(self._registry.all_ready)

    async def shutdown(self) -> None:
        """Report NOT_SERVING everywhere from now on and end open Watch streams."""
        self.servicer.enter_graceful_shutdown()

    def _set_server_status(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        self.servicer.set("", status)
        self.servicer.set(INFERENCE_SERVICE, status)

    def _model_ready(self, name: str) -> bool:
        try:
            return self._registry.get(name).ready
        except Exception:  # not found / not ready: either way not serving
            return False

    def _on_model_state(self, name: str, ready: bool) -> None:
        self.servicer.set(name, SERVING if ready else NOT_SERVING)
        if self._started:
            self._set_server_status(self._registry.all_ready)
