"""gRPC server reflection (so grpcurl and similar tools can discover the API).

Our protocol messages live in a private descriptor pool (see
``batchwire.protos.pool``); the health service's live in protobuf's default
pool. Reflection reads one pool, so the health file is added to ours.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from batchwire.protos import grpc_service_pb2
from batchwire.protos.pool import POOL

if TYPE_CHECKING:
    from batchwire.server.app import GenericHandlersOnly as GenericHandlers

INFERENCE_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def _ensure_in_pool(serialized_file: bytes, name: str) -> None:
    try:
        POOL.FindFileByName(name)
    except KeyError:
        POOL.AddSerializedFile(serialized_file)


def enable_reflection(server: grpc.aio.Server | GenericHandlers) -> None:
    """Serve reflection for the inference, health and reflection services."""
    _ensure_in_pool(health_pb2.DESCRIPTOR.serialized_pb, health_pb2.DESCRIPTOR.name)
    reflection.enable_server_reflection(
        (INFERENCE_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server, pool=POOL
    )
