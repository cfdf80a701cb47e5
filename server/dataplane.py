"""The protocol-agnostic inference path shared by every front end.

A front end decodes its wire format into an :class:`InferenceRequest`, calls
:meth:`DataPlane.infer`, and encodes the :class:`InferenceResult`. Unary and
streaming gRPC both go through here, so validation and batching behave the same.
"""

from __future__ import annotations

from batchwire.core.errors import ModelNotReadyError
from batchwire.core.types import InferenceRequest, InferenceResult
from batchwire.core.validation import validate_request
from batchwire.server.registry import ModelRegistry, ServedModel


class DataPlane:
    """Validates requests and hands them to the model's batcher."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def resolve(self, name: str, version: str = "") -> ServedModel:
        """The ready model version a request addresses (raises NOT_FOUND / UNAVAILABLE)."""
        return self.registry.get(name, version)

    async def infer(
        self, served: ServedModel, request: InferenceRequest, datatypes: dict[str, str]
    ) -> InferenceResult:
        """Validate ``request`` against the model and await its result from the batcher."""
        spec = served.spec
        batcher = served.batcher
        if spec is None or batcher is None:
            raise ModelNotReadyError(
                f"model '{served.name}' version '{served.version}' is not ready"
            )
        validate_request(spec, request, datatypes)
        return await batcher.submit(request)
