"""Hooks through which the batcher reports what it did (statistics, metrics, tracing).

The batcher calls these from the event loop thread; implementations must be
cheap and must not raise (the batcher logs and ignores an observer's exception).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from batchwire.core.errors import InferenceError
from batchwire.core.types import InferenceRequest


@dataclass(slots=True)
class BatchRecord:
    """One executed batch."""

    model: str
    version: str
    #: Items in the batch (sum of the requests' batch dimensions).
    size: int
    #: Items after padding ragged inputs / filling to a preferred size (== size when none).
    padded_size: int
    request_count: int
    device: str
    instance: int
    #: perf_counter_ns when the batch started assembling.
    start_ns: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int
    #: The trace contexts of the requests in the batch (for span links).
    trace_contexts: tuple[object, ...] = ()
    #: None when the batch succeeded.
    error: InferenceError | None = None


class BatchObserver(Protocol):
    """Receives batch and request events for one model version."""

    def batch_executed(self, record: BatchRecord) -> None: ...

    def request_finished(self, request: InferenceRequest, error: InferenceError | None) -> None: ...

    def queue_changed(self, model: str, version: str, priority: int, depth: int) -> None: ...


class NullObserver:
    """An observer that ignores everything (the default)."""

    def batch_executed(self, record: BatchRecord) -> None:
        return None

    def request_finished(self, request: InferenceRequest, error: InferenceError | None) -> None:
        return None

    def queue_changed(self, model: str, version: str, priority: int, depth: int) -> None:
        return None
