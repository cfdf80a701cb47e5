"""Requests and results as the data plane and the batcher see them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class RequestTimings:
    """Where a request's time went, in nanoseconds (``time.perf_counter_ns`` clock).

    Filled by the batcher; read by statistics, metrics and tracing. Batch-level
    phases (compute input / infer / output) are the batch's, shared by every
    request in it, as in Triton's statistics.
    """

    received_ns: int = 0
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    #: Items (sum of batch dimensions) in the batch this request ran in.
    batch_size: int = 0
    #: The batch this request ran in: a number unique within the server process, the
    #: same for every request of one runner call (0: no batch ran it). Audit records
    #: carry it, so requests answered together can be found together.
    batch_id: int = 0


@dataclass(frozen=True, slots=True)
class SharedTensor:
    """Where a tensor's data lies in a registered shared-memory region (Triton's
    ``shared_memory_region``, ``shared_memory_offset`` and ``shared_memory_byte_size``)."""

    region: str
    offset: int
    byte_size: int


@dataclass(slots=True)
class SharedTensors:
    """The tensors of one request that travel through shared memory, not in its message.

    Filled by the front end's decoding; read and written by the shared-memory stage
    (:mod:`batchwire.server.shared_memory_stage`), which turns each input into an array
    before validation and writes each output into its region once the result is known.
    """

    #: Input name -> (its region window, its v2 datatype, its shape).
    inputs: dict[str, tuple[SharedTensor, str, tuple[int, ...]]] = field(default_factory=dict)
    #: Requested output name -> the region window to write it into.
    outputs: dict[str, SharedTensor] = field(default_factory=dict)


@dataclass(slots=True)
class InferenceRequest:
    """A decoded, validated inference request for one model version.

    ``inputs`` hold full shapes, batch dimension first when the model batches,
    as numpy arrays in storage dtypes (see :mod:`batchwire.core.datatypes`).
    """

    inputs: dict[str, np.ndarray]
    #: Outputs to return, in the order to return them; empty means all, in config order.
    requested_outputs: tuple[str, ...] = ()
    id: str = ""
    #: Priority level (1 highest); 0 means the model's default level.
    priority: int = 0
    #: Queue timeout override in microseconds (honoured only where the policy allows it).
    timeout_us: int | None = None
    #: Caller's deadline on the ``time.monotonic()`` clock; None means none.
    deadline: float | None = None
    #: Opaque tracing context of the request's span (set by the front end when tracing).
    trace_context: object | None = None
    #: The caller has shown it sends requests without waiting for answers (a stream
    #: with several requests in flight), so more may already be on their way: the
    #: batch window never treats this request as alone (see batching.policy, rule 4).
    pipelined: bool = False
    timings: RequestTimings = field(default_factory=RequestTimings)
    #: Inputs still to be read from, and outputs to be written to, shared memory (None:
    #: every tensor travels in the message). The batcher never sees a request with
    #: inputs left here: the shared-memory stage moves them into ``inputs`` first.
    shared: SharedTensors | None = None

    @property
    def batch_size(self) -> int:
        """Items this request contributes to a batch (its leading dimension)."""
        for array in self.inputs.values():
            return int(array.shape[0]) if array.ndim else 1
        return 1


@dataclass(slots=True)
class InferenceResult:
    """The outputs of one request: name -> numpy array (storage dtype), in response order."""

    outputs: dict[str, np.ndarray]
    timings: RequestTimings
    #: Outputs written into shared memory: the response carries their name, datatype
    #: and shape, and no data.
    shared_outputs: frozenset[str] = frozenset()
