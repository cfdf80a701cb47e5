"""Model instances and running batches on them: threads, devices, CUDA streams, warmup,
failure isolation.

One :class:`Instance` per model instance: a runner from ``Model.create_runner``, a device,
and a dedicated worker thread (a one-thread ``ThreadPoolExecutor``) that does everything
for that instance: creating the runner, warmup, and every batch. The event loop never
runs model code; torch releases the GIL in its kernels, so the loop keeps accepting
requests while a batch computes.

A batch runs entirely in its instance's worker thread: assembly (one concatenate per
input), host->device transfer, the runner, device->host transfer, output validation,
conversion to numpy once per output, split into per-request views, and building each
request's :class:`InferenceResult`. The loop thread is handed back only finished
outcomes.

CUDA (instances whose device type is ``cuda``; CPU instances never touch CUDA APIs):
inputs are staged into per-instance pinned host buffers (grown on demand, reused across
batches), copied with ``non_blocking=True`` on the instance's own ``torch.cuda.Stream``,
the runner runs under that stream, outputs are copied once per batch into pinned host
tensors on the same stream, and the stream is synchronized before anything is read.
The worker thread's current device is set to the instance's device.

Failure isolation (per batch, in the worker thread):

- an exception fails only that batch's requests, with ModelExecutionError
  ``"model 'm' version 'v' failed: <ExceptionType>: <message>"`` (an InferenceError
  raised by the runner itself keeps its class, status and message);
- CUDA out-of-memory (``torch.cuda.OutOfMemoryError`` or a RuntimeError mentioning
  "out of memory") with ``split_on_oom``: the batch is split in halves (by request),
  the CUDA cache emptied, and each half retried, recursively, before anyone fails;
- any other exception with ``retry_by_halves`` and more than one request: halves are
  retried recursively, so only the request(s) that fail alone are failed;
- outputs that do not match the spec (:class:`OutputError`: a missing or undeclared
  output, a shape or datatype other than the config's; see
  :mod:`batchwire.batching.outputs`) fail the batch, not retried. During warmup they
  fail the load, so the model never becomes ready.

Every attempt (a runner call, failed or not) yields one :class:`BatchRecord`.

Concurrency: an instance's runner, stream and staging buffers are touched only by its
worker thread. Entries handed to a worker are read-only to it except for their
request's ``timings``, which the worker fills (the submitting coroutine is suspended
until its future is resolved on the loop thread). The worker reads ``entry.future.done()``
without a lock to skip requests cancelled before their batch started (a benign race: a
cancellation it misses only means the result is dropped later).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from batchwire.batching.assembly import AssembledBatch, Assembler, OutputError
from batchwire.core.datatypes import NUMPY_DTYPES, WIRE_DTYPES
from batchwire.core.errors import (
    DeadlineExceededError,
    InferenceError,
    ModelExecutionError,
    ModelLoadError,
)
from batchwire.core.observer import BatchRecord
from batchwire.core.torch_tensors import to_torch
from batchwire.core.types import InferenceRequest, InferenceResult

if TYPE_CHECKING:
    from batchwire.batching.queue import Entry
    from batchwire.core.model import Model, ModelRunner, TensorDict
    from batchwire.core.spec import ModelSpec, WarmupSpec

__all__ = ["Executor", "Instance", "Job", "is_oom"]

logger = logging.getLogger(__name__)

_perf_ns = time.perf_counter_ns
#: Batch numbers for RequestTimings.batch_id, shared by every model of the process.
#: ``next()`` on a count is atomic under the GIL, so worker threads may draw from it.
_batch_ids = itertools.count(1)


def is_oom(exc: BaseException) -> bool:
    """True for a CUDA out-of-memory error (typed, or a RuntimeError saying so)."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc)


class Instance:
    """One model instance: device, runner, worker thread and (CUDA) stream + staging."""

    __slots__ = (
        "busy",
        "cuda",
        "device",
        "hung",
        "index",
        "pinned",
        "pool",
        "runner",
        "running",
        "stream",
    )

    def __init__(
        self, index: int, device: torch.device, model_name: str, threads: int | None = None
    ) -> None:
        """``threads``: torch intra-op threads of the worker thread (None: torch's default)."""
        self.index = index
        self.device = device
        self.cuda = device.type == "cuda"
        self.pool = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"batchwire-{model_name}-{index}",
            initializer=_init_worker,
            initargs=(device if self.cuda else None, threads),
        )
        self.runner: ModelRunner | None = None
        self.stream: torch.cuda.Stream | None = None
        self.pinned: dict[str, torch.Tensor] = {}
        #: Batches handed to the worker and not yet reported back (loop thread only).
        self.busy = 0
        #: The job the worker thread is running now (written by the worker, read by the
        #: loop's hang watchdog: a plain reference swap, atomic under the GIL).
        self.running: Job | None = None
        #: The hang watchdog declared the running batch hung (loop thread only).
        self.hung = False

    # -- worker thread (CUDA staging) ----------------------------------------------

    def stage(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A writable numpy view of pinned memory for input ``name`` (CUDA only)."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        buffer = self.pinned.get(name)
        if buffer is None or buffer.numel() < nbytes:
            size = max(nbytes, 2 * buffer.numel() if buffer is not None else 0, 4096)
            buffer = self.pinned[name] = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        return buffer[:nbytes].numpy().view(dtype).reshape(shape)


class Job:
    """One batch on its way through a worker and back (results filled by the worker)."""

    __slots__ = (
        "cpu_ns",
        "crash",
        "entries",
        "instance",
        "records",
        "results",
        "started",
        "threads",
    )

    def __init__(self, instance: Instance, entries: list[Entry]) -> None:
        self.instance = instance
        self.entries = entries
        self.results: list[tuple[Entry, InferenceResult | InferenceError]] = []
        self.records: list[BatchRecord] = []
        self.crash: BaseException | None = None
        #: CPU time the running thread spent on the job (written by whichever thread ran it).
        self.cpu_ns = 0
        #: Intra-op threads the worker runs it with (0: leave the thread's setting).
        self.threads = 0
        #: time.monotonic() when a worker thread started running it (0.0: not yet).
        self.started = 0.0


class Executor:
    """Runs batches on instances (worker-thread side). Immutable after construction."""

    def __init__(self, spec: ModelSpec, assembler: Assembler, *, record: bool) -> None:
        self._spec = spec
        self._assembler = assembler
        self._name = spec.name
        self._version = spec.version
        self._where = f"model '{spec.name}' version '{spec.version}'"
        batching = spec.batching
        self._retry = bool(batching and batching.retry_by_halves)
        self._split_oom = bool(batching and batching.split_on_oom)
        self._dtypes = {t.name: t.datatype for t in spec.inputs}
        self._record = record

    # -- loading (worker thread) ---------------------------------------------------

    def load(self, model: Model, instance: Instance) -> None:
        """Create the instance's runner and run the spec's warmup through it."""
        device = instance.device
        try:
            if instance.cuda:
                instance.stream = torch.cuda.Stream(device=device)
            instance.runner = model.create_runner(device, instance.index)
        except Exception as exc:
            raise ModelLoadError(
                f"{self._where}: creating instance {instance.index} on {device} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        for warmup in self._spec.warmup:
            try:
                request = self._warmup_request(warmup)
                size = request.batch_size if self._assembler.batched else 1
                for _ in range(warmup.count):
                    self._run(instance, [request], [size])
            except Exception as exc:
                raise ModelLoadError(
                    f"{self._where}: warmup '{warmup.name}' failed on instance "
                    f"{instance.index} ({device}): {type(exc).__name__}: {exc}"
                ) from exc

    def _warmup_request(self, warmup: WarmupSpec) -> InferenceRequest:
        rng = np.random.default_rng(0)
        inputs: dict[str, np.ndarray] = {}
        for tensor in self._spec.inputs:
            given = warmup.inputs.get(tensor.name)
            if given is None:
                if tensor.optional:
                    continue
                given = (tensor.datatype, tensor.dims, "zero")
            datatype, dims, fill = given
            dims = tuple(1 if d < 0 else d for d in dims)
            shape = (warmup.batch_size, *dims) if self._assembler.batched else dims
            inputs[tensor.name] = _warmup_array(datatype, shape, fill, rng)
        return InferenceRequest(inputs=inputs, id=f"warmup:{warmup.name}")

    # -- batches (worker thread) ---------------------------------------------------

    def run_job(self, job: Job) -> None:
        """Run one batch; fills ``job.results`` (every live entry) and ``job.records``."""
        now = time.monotonic()
        live: list[Entry] = []
        for entry in job.entries:
            if entry.future.done():  # cancelled before its batch started: drop it
                continue
            deadline = entry.deadline
            if deadline is not None and deadline <= now:
                job.results.append(
                    (
                        entry,
                        DeadlineExceededError(
                            f"deadline exceeded before {self._where} could run the request; "
                            "it was not run"
                        ),
                    )
                )
                continue
            live.append(entry)
        if live:
            self._execute(job, live)

    def _execute(self, job: Job, entries: list[Entry]) -> None:
        instance = job.instance
        requests = [entry.request for entry in entries]
        sizes = [entry.items for entry in entries]
        start_ns = _perf_ns()
        try:
            outputs, times, padded = self._run(instance, requests, sizes)
        except OutputError as exc:
            # A model/config mismatch, not a bad request: halving would fail every half.
            logger.warning("a batch of %d request(s) failed: %s", len(entries), exc.message)
            self._fail(job, entries, requests, sizes, start_ns, exc)
            return
        except Exception as exc:
            oom = is_oom(exc)
            count = len(entries)
            if count > 1 and ((oom and self._split_oom) or self._retry):
                error = self._error(exc)
                elapsed = _perf_ns() - start_ns
                items = sum(sizes)
                self._add_record(job, requests, items, items, start_ns, (0, elapsed, 0), error)
                if oom:
                    logger.warning(
                        "%s: out of memory on a batch of %d requests (%d items) on %s; "
                        "splitting it in halves and retrying",
                        self._where,
                        count,
                        items,
                        instance.device,
                    )
                    if instance.cuda:
                        torch.cuda.empty_cache()
                else:
                    logger.warning(
                        "%s: a batch of %d requests failed (%s); retrying by halves to "
                        "isolate the failing request(s)",
                        self._where,
                        count,
                        error.message,
                    )
                half = count // 2
                self._execute(job, entries[:half])
                self._execute(job, entries[half:])
                return
            logger.warning(
                "%s: a batch of %d request(s) failed: %s: %s",
                self._where,
                count,
                type(exc).__name__,
                exc,
            )
            self._fail(job, entries, requests, sizes, start_ns, self._error(exc))
            return
        in_ns, infer_ns, out_ns = times
        items = sum(sizes)
        queue_end = start_ns
        results = job.results
        batch_id = next(_batch_ids)
        for entry, request, out in zip(entries, requests, outputs, strict=True):
            timings = request.timings
            timings.batch_id = batch_id
            timings.queue_ns = queue_end - timings.received_ns
            timings.compute_input_ns = in_ns
            timings.compute_infer_ns = infer_ns
            timings.compute_output_ns = out_ns
            timings.batch_size = items
            results.append((entry, InferenceResult(out, timings)))
        if self._record:
            self._add_record(job, requests, items, padded, start_ns, times, None)

    def _error(self, exc: BaseException) -> InferenceError:
        """The error a request of a failed batch gets.

        A runner that raises an InferenceError (the repository's runners do, naming what
        was wrong) keeps its class, status and message; anything else becomes
        ModelExecutionError "model 'm' version 'v' failed: <ExceptionType>: <message>".
        """
        if isinstance(exc, InferenceError):
            return _clone(exc)
        return ModelExecutionError(f"{self._where} failed: {type(exc).__name__}: {exc}")

    def _fail(
        self,
        job: Job,
        entries: list[Entry],
        requests: list[InferenceRequest],
        sizes: list[int],
        start_ns: int,
        error: InferenceError,
    ) -> None:
        """Fail every request of an attempt with (its own copy of) ``error``."""
        items = sum(sizes)
        elapsed = _perf_ns() - start_ns
        batch_id = next(_batch_ids)
        for entry, request in zip(entries, requests, strict=True):
            timings = request.timings
            timings.batch_id = batch_id
            timings.queue_ns = start_ns - timings.received_ns
            timings.compute_infer_ns = elapsed
            timings.batch_size = items
            job.results.append((entry, _clone(error)))
        if self._record:
            self._add_record(job, requests, items, items, start_ns, (0, elapsed, 0), error)

    def _add_record(
        self,
        job: Job,
        requests: list[InferenceRequest],
        items: int,
        padded: int,
        start_ns: int,
        times: tuple[int, int, int],
        error: InferenceError | None,
    ) -> None:
        if not self._record:
            return
        instance = job.instance
        job.records.append(
            BatchRecord(
                model=self._name,
                version=self._version,
                size=items,
                padded_size=padded,
                request_count=len(requests),
                device=str(instance.device),
                instance=instance.index,
                start_ns=start_ns,
                compute_input_ns=times[0],
                compute_infer_ns=times[1],
                compute_output_ns=times[2],
                trace_contexts=tuple(
                    r.trace_context for r in requests if r.trace_context is not None
                ),
                error=error,
            )
        )

    def _run(
        self, instance: Instance, requests: Sequence[InferenceRequest], sizes: Sequence[int]
    ) -> tuple[list[dict[str, np.ndarray]], tuple[int, int, int], int]:
        """One runner call: (per-request outputs, (input, infer, output) ns, padded size)."""
        t0 = _perf_ns()
        runner = instance.runner
        # load() set both before the instance took its first batch; stop() clears the
        # runner only once nothing runs.
        assert runner is not None
        if instance.cuda:
            batch = self._assembler.assemble(requests, sizes, instance.stage)
            stream = instance.stream
            assert stream is not None
            with torch.cuda.stream(stream):
                inputs = self._to_device(batch, instance.device)
                t1 = _perf_ns()
                with torch.inference_mode():
                    # Whatever the runner returned: split() checks it against the spec.
                    raw: object = runner(inputs)
                stream.synchronize()
                t2 = _perf_ns()
                raw = _to_host(raw)
            stream.synchronize()
        else:
            batch = self._assembler.assemble(requests, sizes)
            dtypes = self._dtypes
            inputs = {name: to_torch(array, dtypes[name]) for name, array in batch.host.items()}
            t1 = _perf_ns()
            with torch.inference_mode():
                raw = runner(inputs)
            t2 = _perf_ns()
        outputs = self._assembler.split(raw, batch, requests)
        t3 = _perf_ns()
        return outputs, (t1 - t0, t2 - t1, t3 - t2), batch.padded_size

    def _to_device(self, batch: AssembledBatch, device: torch.device) -> TensorDict:
        """Staged (pinned) host arrays -> device tensors, asynchronously on the current stream."""
        dtypes = self._dtypes
        inputs: TensorDict = {}
        for name, array in batch.host.items():
            datatype = dtypes[name]
            if datatype == "BYTES":
                inputs[name] = array
            else:
                tensor = cast(torch.Tensor, to_torch(array, datatype))  # not BYTES: a tensor
                inputs[name] = tensor.to(device, non_blocking=True)
        return inputs


def _init_worker(cuda_device: torch.device | None, threads: int | None) -> None:
    """Worker-thread start: its CUDA device, and its own intra-op thread count.

    ``torch.set_num_threads`` sets the OpenMP thread count of the calling thread only,
    so each instance (and the event loop, for inline batches) keeps its own.
    """
    if cuda_device is not None:
        torch.cuda.set_device(cuda_device)
    if threads is not None:
        torch.set_num_threads(threads)


def _clone(error: InferenceError) -> InferenceError:
    """A fresh instance of ``error`` (each request raises its own exception object)."""
    try:
        return type(error)(error.message)
    except Exception:  # a subclass with another constructor
        return ModelExecutionError(error.message)


def _to_host(outputs: object) -> object:
    """Device outputs -> pinned host tensors, asynchronously on the current stream."""
    if not isinstance(outputs, dict):
        return outputs
    host = {}
    for name, value in outputs.items():
        if isinstance(value, torch.Tensor) and value.device.type == "cuda":
            pinned = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
            pinned.copy_(value, non_blocking=True)
            value = pinned
        host[name] = value
    return host


def _warmup_array(
    datatype: str, shape: tuple[int, ...], fill: str, rng: np.random.Generator
) -> np.ndarray:
    """Warmup data: "zero", "random", or the raw little-endian contents of a file."""
    dtype = NUMPY_DTYPES[datatype]
    if fill == "zero":
        if datatype == "BYTES":
            return np.full(shape, b"", dtype=object)
        return np.zeros(shape, dtype)
    if fill == "random":
        if datatype == "BYTES":
            out = np.empty(shape, dtype=object)
            out.reshape(-1)[:] = [rng.bytes(8) for _ in range(out.size)]
            return out
        if datatype == "BOOL":
            return rng.integers(0, 2, size=shape).astype(np.bool_)
        if datatype == "BF16":
            return torch.randn(shape, dtype=torch.bfloat16).view(torch.uint16).numpy()
        if dtype.kind == "f":
            return rng.standard_normal(size=shape).astype(dtype)
        return rng.integers(0, 10, size=shape).astype(dtype)
    data = Path(fill).read_bytes()
    if datatype == "BYTES":
        return np.full(shape, data, dtype=object)
    count = int(np.prod(shape, dtype=np.int64))
    wire = WIRE_DTYPES[datatype]
    if len(data) != count * wire.itemsize:
        raise ValueError(
            f"warmup data file '{fill}' holds {len(data)} bytes, expected "
            f"{count * wire.itemsize} ({datatype} {list(shape)})"
        )
    return np.frombuffer(data, dtype=wire).astype(dtype).reshape(shape)
