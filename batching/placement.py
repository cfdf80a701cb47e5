"""Where a CPU batch runs and how wide: inline on the event loop, or on the instance's
worker thread with one or several torch intra-op threads.

Both decisions follow measured cost: the CPU time the running thread spent on a batch
(assembly, model, split). CPU time, not wall time, so that a thread preempted on a busy
machine does not look slow. Two EWMAs (weight 1/4) are kept, on the loop thread, as
batches are answered: ``inline_ns`` for batches run on the loop thread and
``worker_ns`` for batches run by a worker thread. They differ: a worker thread contends
with the loop for the GIL, so under load the same batch costs it several times the CPU
time it costs the loop (figures: ``docs/benchmarks.md``, batching.placement).

**Inline** when ``inline_ns < inline_below_us``: the batch runs on the loop thread, at
one intra-op thread. Handing a batch to a worker thread and back costs two thread
wake-ups plus that GIL contention, more than such a batch itself; blocking the loop
that long delays other requests by no more than the hand-offs would have.
``inline_ns`` is only known by running inline, so while batches go to the worker, a
*probe* runs one inline every ``PROBE_EVERY`` worker batches (the first after
``FIRST_PROBE`` batches, past TorchScript's profiling runs), but only while
``worker_ns`` is below ``PROBE_LIMIT`` times the threshold: a model that is slow on its
worker is not tried on the loop. A probe's cost replaces ``inline_ns`` outright.

**Worker threads** otherwise. With an explicit thread count (the model's
``batchwire.intra_op_threads``, else the server's ``--intra-op-threads``) every batch uses
it. Without one, a batch uses the instance's share of the cores (usable cores divided
among the model's CPU instances) only when batches are long: parallel regions cost
thread wake-ups and barriers that short batches do not repay, idle OpenMP threads spin
on the cores the gRPC threads need, and on a busy machine one descheduled OpenMP
thread stalls the whole batch. It starts at one thread, goes wide when
``worker_ns >= parallel_above_us``, and back to one thread when
``worker_ns < parallel_above_us / threads``: a batch cannot speed up by more than its
thread count, so the choice does not flip back by itself.

CUDA instances never run inline, and their thread count is left alone.
"""

from __future__ import annotations

__all__ = ["DEFAULT_PARALLEL_ABOVE_US", "FIRST_PROBE", "PROBE_EVERY", "PROBE_LIMIT", "Placement"]

#: Worker batches shorter than this (on average) run on one intra-op thread.
DEFAULT_PARALLEL_ABOVE_US = 1000
#: Worker batches between two inline probes.
PROBE_EVERY = 64
#: Worker batches before the first probe.
FIRST_PROBE = 4
#: Probe only while ``worker_ns`` is below this many times the inline threshold.
PROBE_LIMIT = 10
_WEIGHT = 0.25
_INF = float("inf")


class Placement:
    """The two cost EWMAs and the decisions above. Loop thread only (no locking)."""

    __slots__ = (
        "_inline_limit",
        "_parallel_ns",
        "_probe_limit",
        "_probing",
        "_until_probe",
        "_wide",
        "adaptive",
        "inline_ns",
        "threads",
        "worker_ns",
    )

    def __init__(
        self,
        inline_below_us: int,
        threads: int,
        *,
        adaptive: bool,
        parallel_above_us: int = DEFAULT_PARALLEL_ABOVE_US,
    ) -> None:
        """``threads``: the instance's thread count; ``adaptive``: it was not set explicitly.

        ``inline_below_us`` 0 never runs a batch inline.
        """
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if inline_below_us < 0:
            raise ValueError(f"inline_below_us must be >= 0, got {inline_below_us}")
        self._inline_limit = inline_below_us * 1000
        self._probe_limit = self._inline_limit * PROBE_LIMIT
        self._parallel_ns = parallel_above_us * 1000
        self.threads = threads
        self.adaptive = adaptive
        self.inline_ns = _INF
        self.worker_ns = _INF
        self._until_probe = FIRST_PROBE
        self._probing = False
        self._wide = False

    def run_inline(self) -> bool:
        """Whether the next CPU batch runs on the loop thread (call once per batch)."""
        if self.inline_ns < self._inline_limit:
            return True
        if not self._inline_limit:
            return False
        self._until_probe -= 1
        if self._until_probe > 0 or not self.worker_ns < self._probe_limit:
            return False
        self._until_probe = PROBE_EVERY
        self._probing = True
        return True

    def record_inline(self, cpu_ns: int) -> None:
        """A batch run on the loop thread took ``cpu_ns``."""
        if self._probing or self.inline_ns == _INF:
            self._probing = False
            self.inline_ns = float(cpu_ns)
        else:
            self.inline_ns += _WEIGHT * (cpu_ns - self.inline_ns)

    def record_worker(self, cpu_ns: int) -> None:
        """A batch run by a worker thread took ``cpu_ns`` of that thread's CPU time."""
        if self.worker_ns == _INF:
            self.worker_ns = float(cpu_ns)
        else:
            self.worker_ns += _WEIGHT * (cpu_ns - self.worker_ns)

    def worker_threads(self) -> int:
        """Intra-op threads for the next CPU batch run by a worker thread."""
        threads = self.threads
        if not self.adaptive or threads == 1 or self.worker_ns == _INF:
            return threads if not self.adaptive else 1
        if self._wide:
            if self.worker_ns < self._parallel_ns / threads:
                self._wide = False
        elif self.worker_ns >= self._parallel_ns:
            self._wide = True
        return threads if self._wide else 1
