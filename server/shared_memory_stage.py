"""The shared-memory stage: inputs read from, and outputs written to, registered regions.

Placed after decoding and before validation (:data:`batchwire.server.stages.STAGES`).
Decoding records where a request's shared-memory tensors lie
(:class:`~batchwire.core.types.SharedTensors`); this stage, for a request that has
some:

1. Looks up every region window the request names, inputs and outputs alike, before
   anything runs (:meth:`~batchwire.server.shared_memory.SharedMemoryRegions.view`:
   an unknown region is NOT_FOUND, a window outside its region INVALID_ARGUMENT).
2. Turns each input window into an array over the region itself, read-only and
   without a copy (``np.frombuffer``): the batch assembly copies it into the batch,
   or a batch of one hands it to the model as it is. A fixed-size datatype's window
   must hold exactly the tensor's bytes (INVALID_ARGUMENT, expected against got, as
   Triton's byte-size check); a BYTES window is parsed as length-prefixed elements.
3. Passes the call on and, once the result is known, copies each shared output from
   the result (the batch's slice for this request) straight into its window. An
   output larger than its window is Triton's INTERNAL "shared memory size specified
   with the request for output 'NAME' (N bytes) should be at least M bytes to hold
   the results". The result then lists those outputs in ``shared_outputs``, and the
   front end sends their metadata without data.

A request without shared-memory tensors costs one attribute test here. With client
shared memory off (``--allow-client-shm`` not set, Triton's default) a request naming
a region is refused with Triton's UNIMPLEMENTED "Client shared memory is disabled".

A copy of a request (a shadow's, :meth:`~batchwire.server.inference_call.InferenceCall.
copy`) reads the same input windows and writes nothing: its outputs stay in its result.

Regions unregistered while a request uses them stay mapped until it is done: the
arrays and views hold the mapping (:mod:`batchwire.server.shared_memory`), so nothing
reads or writes unmapped memory. A request cancelled while it runs writes nothing.

Concurrency: loop thread; the input arrays may be read by the batcher's worker
threads, and the outputs are written on the loop once the batch is done.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import numpy as np

from batchwire.core.datatypes import serialize_bytes
from batchwire.core.errors import InferenceError, UnsupportedError
from batchwire.server.codec import tensor_from_buffer
from batchwire.server.pipeline import Stage

if TYPE_CHECKING:
    from batchwire.core.spec import ModelSpec
    from batchwire.core.types import InferenceRequest, InferenceResult, SharedTensors
    from batchwire.server.dataplane import DataPlane
    from batchwire.server.inference_call import InferenceCall
    from batchwire.server.shared_memory import SharedMemoryRegions

__all__ = ["CLIENT_SHM_DISABLED", "OutputRegionTooSmallError", "SharedMemory"]

#: Triton's words when client shared memory is off (status UNIMPLEMENTED).
CLIENT_SHM_DISABLED = (
    "Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable."
)


class OutputRegionTooSmallError(InferenceError):
    """An output does not fit the shared-memory window the request gave it (Triton: INTERNAL)."""

    reason = "invalid_argument"


class SharedMemory(Stage):
    """Reads shared-memory inputs, writes shared-memory outputs (see the module docstring)."""

    __slots__ = ("regions",)

    def __init__(self, plane: DataPlane, model: str | None) -> None:
        super().__init__()
        self.regions: SharedMemoryRegions | None = plane.shared_memory.regions

    def __call__(self, call: InferenceCall) -> Awaitable[InferenceResult]:
        # After Decode: call.request is set.
        shared = call.request.shared  # type: ignore[union-attr]
        if shared is None:
            return self.next(call)
        return self._through_regions(call, shared)

    async def _through_regions(self, call: InferenceCall, shared: SharedTensors) -> InferenceResult:
        regions = self.regions
        if regions is None:
            raise UnsupportedError(CLIENT_SHM_DISABLED)
        request: InferenceRequest = call.request  # type: ignore[assignment]
        spec: ModelSpec = call.served.spec  # type: ignore[union-attr,assignment]
        model = spec.name
        outputs = {
            name: regions.view(where.region, where.offset, where.byte_size, f"output '{name}'")
            for name, where in shared.outputs.items()
        }
        for name, (where, datatype, shape) in shared.inputs.items():
            view = regions.view(where.region, where.offset, where.byte_size, f"input '{name}'")
            request.inputs[name] = _input_array(model, name, where.region, view, datatype, shape)
        result = await self.next(call)
        # A copy (a shadow's) reads the caller's inputs but never writes its outputs: the
        # caller's regions hold the answer the caller gets.
        if outputs and call.copy_of is None:
            output_map = spec.output_map
            produced = result.outputs
            for name, view in outputs.items():
                array = produced.get(name)
                if array is not None:
                    _write_output(name, view, array, output_map[name].datatype == "BYTES")
            result.shared_outputs = frozenset(outputs)
        return result


def _input_array(
    model: str,
    name: str,
    region: str,
    view: memoryview,
    datatype: str,
    shape: tuple[int, ...],
) -> np.ndarray:
    # Read-only: a model that writes to its input must not write into the client's region.
    data = view if datatype == "BYTES" else view.toreadonly()
    return tensor_from_buffer(model, name, datatype, shape, math.prod(shape), data, region)


def _write_output(name: str, view: memoryview, array: np.ndarray, is_bytes: bool) -> None:
    data = serialize_bytes(array) if is_bytes else None
    size = len(data) if data is not None else array.nbytes
    if size > len(view):
        raise OutputRegionTooSmallError(
            f"shared memory size specified with the request for output '{name}' "
            f"({len(view)} bytes) should be at least {size} bytes to hold the results"
        )
    if data is not None:
        view[:size] = data
    elif size:
        target = np.frombuffer(view, dtype=array.dtype, count=array.size)
        np.copyto(target.reshape(array.shape), array)
