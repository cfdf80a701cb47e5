"""Dynamic micro-batching for one model version: queue, dispatch policy, executor.

The server codes against :class:`ModelBatcher` only; it knows nothing of protobuf or
gRPC. Modules: :mod:`~batchwire.batching.queue` (priority levels, queue policies,
timeouts, cancellation), :mod:`~batchwire.batching.policy` (when a batch that could still
grow is dispatched: the adaptive wait), :mod:`~batchwire.batching.assembly` (stacking
and padding inputs, splitting and slicing outputs), :mod:`~batchwire.batching.executor`
(instances, worker threads, devices, CUDA streams, warmup, failure isolation),
:mod:`~batchwire.batching.devices` (instance groups to devices) and
:mod:`~batchwire.batching.batcher` (ties them together).
"""

from batchwire.batching.batcher import ModelBatcher
from batchwire.batching.devices import resolve_devices

__all__ = ["ModelBatcher", "resolve_devices"]
