"""What a server says about itself and its models, in protocol-neutral form.

The data plane answers metadata, readiness and repository queries with these
frozen dataclasses; each front end renders them in its own wire format (the gRPC
servicer as protobuf messages, a KServe v2 REST front end as JSON). Field names
and meanings follow the KServe v2 / Triton protocol.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    """The server's name, batchwire's version and the protocol extensions it implements."""

    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    """One input or output: its v2 datatype and full shape, -1 where any size goes."""

    name: str
    datatype: str
    #: Batch dimension first (as -1) when the model batches, as a request must carry it.
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """One model version as ModelMetadata reports it."""

    name: str
    #: Every version the repository holds for the model, in any state.
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]


@dataclass(frozen=True, slots=True)
class RepositoryEntry:
    """One row of the repository index: a model version, or a model that failed as a whole.

    ``version`` is empty for a model whose folder could not be read at all;
    ``state`` is one of Triton's model states (LOADING, READY, UNLOADING,
    UNAVAILABLE) and ``reason`` says why a version is not ready.
    """

    name: str
    version: str
    state: str
    reason: str
