"""The standard ``grpc.health.v1.Health`` service, kept in step with the registry.

Service names: ``""`` (the whole server: SERVING once every model is ready),
``inference.GRPCInferenceService``, and one entry per model name.
"""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health, health_pb2

from batchwire.server.registry import ModelRegistry

INFERENCE_SERVICE = "inference.GRPCInferenceService"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthReporter:
    """Owns the health servicer and updates it on model state changes (event loop only)."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.servicer = health.aio.HealthServicer()
        self._registry = registry
        self._pending: set[asyncio.Task] = set()
        registry.add_listener(self._on_model_state)

    async def set_server(self, serving: bool) -> None:
        status = _SERVING if serving else _NOT_SERVING
        await self.servicer.set("", status)
        await self.servicer.set(INFERENCE_SERVICE, status)

    async def refresh(self) -> None:
        """Publish the current state of the server and every model."""
        for served in self._registry.index():
            await self.servicer.set(
                served.name, _SERVING if self._model_ready(served.name) else _NOT_SERVING
            )
        await self.set_server(self._registry.all_ready)

    async def shutdown(self) -> None:
        await self.servicer.enter_graceful_shutdown()

    def _model_ready(self, name: str) -> bool:
        try:
            return self._registry.get(name).ready
        except Exception:
            return False

    def _on_model_state(self, name: str, ready: bool) -> None:
        task = asyncio.ensure_future(self._publish(name, ready))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _publish(self, name: str, ready: bool) -> None:
        await self.servicer.set(name, _SERVING if ready else _NOT_SERVING)
        await self.set_server(self._registry.all_ready)
