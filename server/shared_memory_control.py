"""Triton's shared-memory operations (System/CudaSharedMemory Register, Unregister, Status).

Protocol-neutral: a front end calls these and maps the raised
:class:`~batchwire.core.errors.InferenceError` to its status, as for every other
data-plane operation. The regions themselves are
:class:`~batchwire.server.shared_memory.SharedMemoryRegions`; the requests that use
them pass the shared-memory stage (:mod:`batchwire.server.shared_memory_stage`).

Rules, as Triton's server has them:

- Client shared memory is off unless the server runs with ``--allow-client-shm``
  (Triton's option and default). Off, Register and Unregister (system and CUDA) are
  UNIMPLEMENTED with Triton's "Client shared memory is disabled..." message; Status
  lists nothing (an empty name) or says NOT_FOUND (a name), as nothing can be
  registered.
- Access: all six operations are the ``shared-memory`` group of
  ``--grpc-restricted-protocol`` and need the ``admin`` scope under ``--auth-config``
  (:mod:`batchwire.server.access`).
- CUDA shared memory (CUDA IPC handles) is not implemented: on a host without a GPU,
  Register is Triton's INVALID_ARGUMENT "failed to register CUDA shared memory
  region: 'NAME', GPUs not supported" (what a Triton built without GPU support says);
  on a GPU host it is UNIMPLEMENTED, saying so. Status and Unregister behave as with
  no region registered (an empty list, NOT_FOUND for a name; Unregister is OK).
"""

from __future__ import annotations

from batchwire.core.errors import InvalidInputError, UnsupportedError
from batchwire.server.shared_memory import (
    RegionNotFoundError,
    RegionStatus,
    SharedMemoryRegions,
)
from batchwire.server.shared_memory_stage import CLIENT_SHM_DISABLED

__all__ = ["SharedMemoryControl"]


class SharedMemoryControl:
    """The shared-memory operations of one server (see the module docstring).

    ``regions`` None: client shared memory is off. ``cuda_available``: whether the host
    has a GPU (only the wording of the CUDA refusals depends on it).
    """

    def __init__(self, regions: SharedMemoryRegions | None, *, cuda_available: bool = False):
        self.regions = regions
        self.cuda_available = cuda_available

    # System shared memory ------------------------------------------------

    def status(self, name: str = "") -> list[RegionStatus]:
        """The registered region ``name`` (every region when empty)."""
        if self.regions is None:
            if name:
                raise RegionNotFoundError(
                    f"Unable to find system shared memory region: '{name}' "
                    "(client shared memory is disabled)"
                )
            return []
        return self.regions.status(name)

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Register window (``offset``, ``byte_size``) of object ``key`` as region ``name``."""
        self._allowed().register(name, key, offset, byte_size)

    def unregister(self, name: str = "") -> None:
        """Unregister region ``name`` (every region when empty); an unknown name is OK."""
        self._allowed().unregister(name)

    def _allowed(self) -> SharedMemoryRegions:
        if self.regions is None:
            raise UnsupportedError(CLIENT_SHM_DISABLED)
        return self.regions

    # CUDA shared memory --------------------------------------------------

    def cuda_status(self, name: str = "") -> list[RegionStatus]:
        """No CUDA region is ever registered: empty, or NOT_FOUND for a name."""
        if name:
            raise RegionNotFoundError(f"Unable to find cuda shared memory region: '{name}'")
        return []

    def cuda_register(self, name: str) -> None:
        """Always refused (see the module docstring)."""
        if self.regions is None:
            raise UnsupportedError(CLIENT_SHM_DISABLED)
        if not self.cuda_available:
            raise InvalidInputError(
                f"failed to register CUDA shared memory region: '{name}', GPUs not supported "
                "(this server has no GPU; use system shared memory)"
            )
        raise UnsupportedError(
            f"failed to register CUDA shared memory region: '{name}': batchwire does not "
            "implement CUDA shared memory; use system shared memory"
        )

    def cuda_unregister(self, name: str = "") -> None:
        """Nothing to unregister: OK (Triton's answer for a name it does not hold)."""
        if self.regions is None:
            raise UnsupportedError(CLIENT_SHM_DISABLED)
