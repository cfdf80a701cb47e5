"""Shadow traffic: a share of requests also runs on another version, and the answers are compared.

Declared in a model's config::

    parameters { key: "batchwire.shadow" value: { string_value: "2:100" } }
    parameters { key: "batchwire.shadow_tolerance" value: { string_value: "1e-4" } }

Rules:

- ``batchwire.shadow`` is ``version:percent``: that share (0-100, a number) of the
  model's requests is also sent to the shadow version. A request that names the
  shadow version itself is not shadowed. A value that does not parse is a load error
  naming the parameter; so is a tolerance that is not a number >= 0 (default 1e-5).
- The caller always gets the primary's answer (or its error): the shadow copy runs in
  a task of its own through the rest of the chain (its own resolution, decoding,
  validation and batcher), never awaited by the primary, and its result is never
  returned. It queues at the shadow version's lowest priority level when that
  version's config declares ``priority_levels`` (the Decode stage sets it). At most
  :data:`MAX_SHADOWS_IN_FLIGHT` copies per model run at once; past that a copy is
  dropped and counted, so a slow shadow version never holds memory or delays the
  primary beyond the CPU it shares.
- When both answers are in, each output present in both is compared: the largest
  absolute difference (observed in the ``batchwire_shadow_max_abs_diff`` histogram),
  outside the tolerance or not (``..._out_of_tolerance_total``), and for outputs shaped
  like class scores (two or more dimensions, the last one > 1) whether the top-1 class
  of any item differs (``..._argmax_flips_total``). Outputs whose shapes differ count
  as out of tolerance. Labels: model, primary (version), shadow (version), output.
- Shadow copies are counted by outcome in ``batchwire_shadow_requests_total`` (model,
  shadow, outcome: ``compared``, ``shadow_error``, ``primary_error``, ``dropped``).
- The shadow version's own statistics count its copies like any request. A copy of a
  request that uses shared memory reads the same input windows and never writes the
  caller's output windows (:mod:`batchwire.server.shared_memory_stage`).

A model without the parameter has no stage in its chain. The chain is rebuilt at every
load and unload, so a changed parameter applies after a reload.

Concurrency: loop thread only; comparisons run in a done callback on the loop (numpy on
the request's outputs, microseconds for the example models).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from batchwire.core.errors import InferenceError
from batchwire.server.pipeline import Stage
from batchwire.server.traffic_split import fired_by

if TYPE_CHECKING:
    from batchwire.core.types import InferenceResult
    from batchwire.server.dataplane import DataPlane
    from batchwire.server.inference_call import InferenceCall

__all__ = [
    "DIFF_BUCKETS",
    "MAX_SHADOWS_IN_FLIGHT",
    "SHADOW_KEY",
    "TOLERANCE_KEY",
    "ShadowCounts",
    "parse_shadow",
    "parse_tolerance",
    "shadow",
]

log = logging.getLogger(__name__)

SHADOW_KEY = "batchwire.shadow"
TOLERANCE_KEY = "batchwire.shadow_tolerance"
DEFAULT_TOLERANCE = 1e-5
#: Shadow copies of one model running at once; more are dropped.
MAX_SHADOWS_IN_FLIGHT = 64
#: Upper bounds of the max-|difference| histogram (Prometheus ``le``), +Inf implied.
DIFF_BUCKETS = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)

_tasks: set[asyncio.Task] = set()  # asyncio keeps only weak references to tasks


@dataclass(frozen=True, slots=True)
class ShadowPlan:
    version: str
    percent: float
    tolerance: float


def parse_shadow(text: str) -> tuple[str, float]:
    """(version, percent) of a ``batchwire.shadow`` value; ValueError saying what is wrong."""
    version, colon, percent = text.strip().partition(":")
    version, percent = version.strip(), percent.strip()
    try:
        share = float(percent)
    except ValueError:
        share = -1.0
    if not colon or not version.isdigit() or int(version) < 1 or not 0 <= share <= 100:
        raise ValueError(
            f"'{text.strip()[:40]}' is not version:percent (expected e.g. '2:100': a version "
            ">= 1 and a share of requests from 0 to 100)"
        )
    return str(int(version)), share


def parse_tolerance(text: str) -> float:
    """A ``batchwire.shadow_tolerance`` value; ValueError unless a number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"'{text.strip()[:40]}' is not a finite number >= 0")
    return value


class ShadowCounts:
    """What the shadow stages observed, read by the metrics at scrape time."""

    def __init__(self) -> None:
        #: Upper bounds of the max-|difference| histogram's buckets (+Inf implied).
        self.buckets = DIFF_BUCKETS
        #: (model, shadow, outcome) -> shadow copies.
        self.requests: dict[tuple[str, str, str], int] = {}
        #: (model, primary, shadow, output) -> [compared, out of tolerance, argmax flips,
        #: sum of max |diff|, per-bucket counts (len(DIFF_BUCKETS) + 1, the last +Inf)].
        self.outputs: dict[tuple[str, str, str, str], list[float]] = {}

    def count(self, model: str, shadow_version: str, outcome: str) -> None:
        key = (model, shadow_version, outcome)
        self.requests[key] = self.requests.get(key, 0) + 1

    def compare(
        self,
        model: str,
        primary: InferenceResult,
        primary_version: str,
        twin: InferenceResult,
        shadow_version: str,
        tolerance: float,
    ) -> list[bool]:
        """Count the comparison of each output both hold; returns, per output, whether it
        was outside the tolerance."""
        outcomes: list[bool] = []
        for name, a in primary.outputs.items():
            b = twin.outputs.get(name)
            if b is None:
                continue
            key = (model, primary_version, shadow_version, name)
            row = self.outputs.get(key)
            if row is None:
                row = self.outputs[key] = [0.0] * (4 + len(DIFF_BUCKETS) + 1)
            row[0] += 1
            if a.shape != b.shape or a.dtype.kind in "OSU":
                diff = float("inf") if a.shape != b.shape else float(np.any(a != b))
            else:
                delta = np.abs(a.astype(np.float64) - b.astype(np.float64))
                diff = float(delta.max()) if delta.size else 0.0
            outcomes.append(diff > tolerance)
            if diff > tolerance:
                row[1] += 1
            if (
                a.shape == b.shape
                and a.ndim >= 2
                and a.shape[-1] > 1
                and a.dtype.kind in "fiu"
                and bool(np.any(np.argmax(a, axis=-1) != np.argmax(b, axis=-1)))
            ):
                row[2] += 1
            if diff != float("inf"):
                row[3] += diff
            bucket = next((i for i, le in enumerate(DIFF_BUCKETS) if diff <= le), len(DIFF_BUCKETS))
            row[4 + bucket] += 1
        return outcomes


class ShadowStage(Stage):
    """Sends a share of requests to the shadow version too (see the module docstring)."""

    __slots__ = ("_counts", "_gate", "_in_flight", "_model", "_plan", "_plane", "_random")

    def __init__(self, plane: DataPlane, model: str, plan: ShadowPlan) -> None:
        super().__init__()
        self._model = model
        self._plan = plan
        self._plane = plane
        self._counts = plane.shadow_counts
        self._random = random.random
        self._in_flight = 0
        # The model's rollback gate (built by the traffic split stage, earlier in the
        # chain), when it has a disagreement rule.
        gate = plane.rollback_gates.get(model)
        self._gate = gate if gate is not None and gate.watches("disagreement") else None

    def __call__(self, call: InferenceCall) -> Awaitable[InferenceResult]:
        plan = self._plan
        if call.version == plan.version or self._random() * 100.0 >= plan.percent:
            return self.next(call)
        gate = self._gate
        if gate is not None and gate.fired:  # rolled back: the shadow stops too
            return self.next(call)
        if self._in_flight >= MAX_SHADOWS_IN_FLIGHT:
            self._counts.count(self._model, plan.version, "dropped")
            return self.next(call)
        return self._with_shadow(call)

    async def _with_shadow(self, call: InferenceCall) -> InferenceResult:
        plan = self._plan
        twin = call.copy(version=plan.version)
        twin.span = None  # the copy is not part of the caller's trace
        self._in_flight += 1
        task = asyncio.ensure_future(self.next(twin))
        _tasks.add(task)
        task.add_done_callback(self._shadow_done)
        try:
            result = await self.next(call)
        except BaseException:
            task.add_done_callback(lambda done: self._settle(done, None, ""))
            raise
        primary_version = call.served.version if call.served is not None else ""
        task.add_done_callback(lambda done: self._settle(done, result, primary_version))
        return result

    def _shadow_done(self, task: asyncio.Task) -> None:
        _tasks.discard(task)
        self._in_flight -= 1

    def _settle(
        self, task: asyncio.Task, primary: InferenceResult | None, primary_version: str
    ) -> None:
        plan, counts = self._plan, self._counts
        if task.cancelled() or task.exception() is not None:
            exc = None if task.cancelled() else task.exception()
            if exc is not None and not isinstance(exc, InferenceError):
                log.warning("shadow copy for model '%s' failed: %r", self._model, exc)
            counts.count(self._model, plan.version, "shadow_error")
            return
        if primary is None:
            counts.count(self._model, plan.version, "primary_error")
            return
        try:
            outcomes = counts.compare(
                self._model, primary, primary_version, task.result(), plan.version, plan.tolerance
            )
        except Exception:  # a comparison bug must not reach the loop's exception handler
            log.exception("comparing shadow answers of model '%s' failed", self._model)
            return
        counts.count(self._model, plan.version, "compared")
        gate = self._gate
        if gate is not None:
            for bad in outcomes:
                if gate.record("disagreement", bad):
                    fired_by(self._plane, self._model, "disagreement")


def shadow(plane: DataPlane, model: str | None) -> Stage | None:
    """The stage for ``model``'s chain when its config declares a shadow, else None."""
    if model is None:
        return None
    try:
        served = plane.registry.find(model)
    except InferenceError:
        return None
    parameters = served.spec.parameters if served.spec is not None else {}
    text = parameters.get(SHADOW_KEY)
    if not text:
        return None
    version, percent = parse_shadow(text)  # checked at load
    tolerance = parse_tolerance(parameters.get(TOLERANCE_KEY, str(DEFAULT_TOLERANCE)))
    if percent == 0:
        return None
    return ShadowStage(plane, model, ShadowPlan(version, percent, tolerance))
