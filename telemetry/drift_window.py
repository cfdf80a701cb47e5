"""Online drift statistics: live values counted into a profile's bins over a sliding window.

One :class:`DriftWindow` per model version holds the bin counts of its recent requests
for every tensor of its :class:`~batchwire.telemetry.drift_profile.DriftProfile`, and
compares them with the reference by the population stability index (:func:`psi`).

Chunks. :meth:`DriftWindow.add` takes one *chunk*: the arrays of ``requests`` requests
(typically one executed batch), counted at once with
:func:`~batchwire.telemetry.drift_profile.count_bins` -- vectorised over the chunk's
items and features, never a Python loop over them. The chunk is stamped with the clock
reading when ``add`` is called, and the window keeps a deque of chunks with running
sums (so :meth:`~DriftWindow.snapshot` costs ``O(F * B)`` per tensor, not ``O(chunks)``).

Window bounds (chunk granularity). Let ``now`` be the clock at ``add`` or ``snapshot``.
Both first drop every chunk whose age ``now - stamp`` exceeds ``window_seconds``.
``add`` then drops the oldest chunks while the window holds more than
``window_requests`` requests, keeping the newest chunk even when it alone holds more.
So after ``add`` the window is the longest run of newest chunks that are at most
``window_seconds`` old and hold at most ``window_requests`` requests together -- or the
newest chunk alone. Between calls chunks are not aged: a window with no traffic empties
at the next ``add`` or ``snapshot``.

PSI per feature (row), over the window's counts ``c`` against the reference proportions
``e``: ``a = c / sum(c)``; both ``a`` and ``e`` are floored at ``epsilon`` element-wise
(``max(p, epsilon)``, not renormalised), then ``PSI = sum((a - e) * ln(a / e))``. A bin
empty on both sides contributes 0; a row with no counts gives NaN. Sampling noise alone
gives about ``(B - 1) * (1 / n + 1 / N)`` for ``n`` live and ``N`` reference values per
feature (a chi-square's mean): 0.09 at ``n = 100``, ``B = 10``, hence the default
``min_items`` of 1000 (about 0.011 with a 4096-item reference).

State per tensor (``TensorDrift.state``), with ``thresholds = (warning, alert)``:

- ``"insufficient"``: fewer than ``min_items`` items of the tensor in the window, or no
  feature with a counted value (every PSI NaN);
- ``"alert"``: the largest PSI over its features (NaN ones skipped) is ``>= alert``;
- ``"warning"``: it is ``>= warning``;
- ``"ok"`` otherwise.

States never touch readiness: they are for metrics and logs.

Also per tensor: ``nonfinite_ratio``, the share of the window's values (elements; rows
for class scores) that were NaN or infinite, and ``out_of_range_ratio``, the share of
its finite values outside the reference's ``[low, high]``; 0.0 where there is nothing
to divide by.

Threads: ``add`` may run on a worker thread while ``snapshot`` runs on the metrics
thread; one lock guards the deque and the sums. Counting happens before the lock is
taken, and a chunk whose arrays do not fit the profile raises ValueError before
anything is recorded.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from batchwire.telemetry.drift_profile import DriftProfile, TensorProfile, count_bins

__all__ = ["DEFAULT_THRESHOLDS", "STATES", "DriftWindow", "TensorDrift", "psi"]

#: PSI at which a tensor's state becomes "warning", and "alert".
DEFAULT_THRESHOLDS = (0.1, 0.25)
#: Every state a tensor can be in, least to most severe ("insufficient" first).
STATES = ("insufficient", "ok", "warning", "alert")


def psi(expected: np.ndarray, counts: np.ndarray, epsilon: float = 1e-4) -> np.ndarray:
    """Population stability index per row of ``counts`` (F, B) against ``expected`` (F, B).

    ``a = counts / row total``; ``a`` and ``expected`` floored at ``epsilon`` element-wise;
    ``sum((a - e) * ln(a / e))`` per row; NaN for a row with no counts.
    """
    e = np.asarray(expected, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    if e.shape != c.shape or e.ndim != 2:
        raise ValueError(
            f"expected and counts must be the same (F, B), got {e.shape} and {c.shape}"
        )
    totals = c.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.maximum(c / totals, epsilon)
    e = np.maximum(e, epsilon)
    out = ((a - e) * np.log(a / e)).sum(axis=1)
    out[totals[:, 0] == 0] = np.nan
    return out


@dataclass(frozen=True, eq=False)
class TensorDrift:
    """One tensor's drift over the window, as :meth:`DriftWindow.snapshot` saw it."""

    tensor: str
    #: The profile's feature labels, one per row of ``psi`` and ``counts``.
    features: tuple[str, ...]
    #: float64 (F,): PSI per feature, NaN where nothing was counted.
    psi: np.ndarray
    #: int64 (F, B) (``(1, C)`` for classes): the window's bin counts.
    counts: np.ndarray
    #: Values seen in the window (elements; rows of scores for classes), non-finite included.
    values: int
    nonfinite_ratio: float
    out_of_range_ratio: float
    #: "insufficient", "ok", "warning" or "alert" (see the module docstring).
    state: str
    #: Items (batch rows) of this tensor in the window.
    items: int = 0


class _Sums:
    """Running totals of one tensor over the window's chunks."""

    __slots__ = ("counts", "items", "nonfinite", "out_of_range", "values")

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.counts = np.zeros(shape, dtype=np.int64)
        self.items = 0
        self.values = 0
        self.nonfinite = 0
        self.out_of_range = 0

    def add(self, part: _Part, sign: int) -> None:
        if sign > 0:
            self.counts += part.counts
        else:
            self.counts -= part.counts
        self.items += sign * part.items
        self.values += sign * part.values
        self.nonfinite += sign * part.nonfinite
        self.out_of_range += sign * part.out_of_range


@dataclass(frozen=True)
class _Part:
    """One tensor's share of one chunk."""

    counts: np.ndarray
    items: int
    values: int
    nonfinite: int
    out_of_range: int


@dataclass(frozen=True)
class _Chunk:
    stamp: float
    requests: int
    parts: dict[str, _Part]


def _count_chunk(profile: TensorProfile, arrays: Sequence[np.ndarray]) -> _Part:
    """Count the arrays of one tensor from a chunk's requests (batch-first each)."""
    if not arrays:
        return _Part(np.zeros(profile.expected.shape, dtype=np.int64), 0, 0, 0, 0)
    pieces = [np.asarray(a) for a in arrays]
    items = sum(a.shape[0] if a.ndim else 1 for a in pieces)
    if profile.pooled:
        pieces = [a.ravel() for a in pieces]
    if len(pieces) == 1:
        joined = pieces[0]
    else:
        try:
            joined = np.concatenate(pieces)
        except ValueError:
            shapes = ", ".join(str(a.shape) for a in pieces[:4])
            raise ValueError(
                f"tensor '{profile.name}': expected requests of one shape after the batch "
                f"dimension, got {shapes}{', ...' if len(pieces) > 4 else ''}"
            ) from None
    counts, values, nonfinite, out_of_range = count_bins(profile, joined)
    return _Part(counts, items, values, nonfinite, out_of_range)


class DriftWindow:
    """Bin counts of one model version's recent requests, and their PSI (see the module)."""

    def __init__(
        self,
        profile: DriftProfile,
        *,
        window_requests: int = 10000,
        window_seconds: float = 600.0,
        thresholds: tuple[float, float] = DEFAULT_THRESHOLDS,
        min_items: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_requests < 1:
            raise ValueError(f"window_requests must be >= 1, got {window_requests}")
        if not (window_seconds > 0 and math.isfinite(window_seconds)):
            raise ValueError(f"window_seconds must be a finite number > 0, got {window_seconds}")
        warning, alert = thresholds
        if not 0 < warning <= alert:
            raise ValueError(
                f"thresholds must be (warning, alert) with 0 < warning <= alert, got {thresholds}"
            )
        if min_items < 0:
            raise ValueError(f"min_items must be >= 0, got {min_items}")
        self.profile = profile
        self.window_requests = window_requests
        self.window_seconds = window_seconds
        self.thresholds = (float(warning), float(alert))
        self.min_items = min_items
        self._clock = clock
        self._lock = threading.Lock()
        self._chunks: deque[_Chunk] = deque()
        self._requests = 0
        self._sums = {name: _Sums(t.expected.shape) for name, t in profile.tensors.items()}

    @property
    def requests(self) -> int:
        """Requests in the window now (as of the last add or snapshot)."""
        return self._requests

    def add(self, tensors: Mapping[str, Sequence[np.ndarray]], requests: int) -> None:
        """Count one chunk: per tensor, the arrays of its ``requests`` requests.

        Tensors the profile lacks are ignored; a profiled tensor missing from ``tensors``
        (an optional input not sent) adds nothing for this chunk. Per-feature arrays
        need the profile's element count per item; pooled ones may differ in shape.
        """
        if requests < 1:
            raise ValueError(f"requests must be >= 1, got {requests}")
        parts = {
            name: _count_chunk(self.profile.tensors[name], arrays)
            for name, arrays in tensors.items()
            if name in self.profile.tensors
        }
        with self._lock:
            now = self._clock()
            chunk = _Chunk(now, requests, parts)
            self._chunks.append(chunk)
            self._apply(chunk, 1)
            self._expire(now)
            while self._requests > self.window_requests and len(self._chunks) > 1:
                self._apply(self._chunks.popleft(), -1)

    def _apply(self, chunk: _Chunk, sign: int) -> None:
        self._requests += sign * chunk.requests
        for name, part in chunk.parts.items():
            self._sums[name].add(part, sign)

    def _expire(self, now: float) -> None:
        oldest = now - self.window_seconds
        while self._chunks and self._chunks[0].stamp < oldest:
            self._apply(self._chunks.popleft(), -1)

    def snapshot(self) -> dict[str, TensorDrift]:
        """Every profiled tensor's drift over the window now, by tensor name."""
        with self._lock:
            self._expire(self._clock())
            copies = {
                name: (s.counts.copy(), s.items, s.values, s.nonfinite, s.out_of_range)
                for name, s in self._sums.items()
            }
        return {
            name: self._drift(self.profile.tensors[name], *copy) for name, copy in copies.items()
        }

    def _drift(
        self,
        profile: TensorProfile,
        counts: np.ndarray,
        items: int,
        values: int,
        nonfinite: int,
        out_of_range: int,
    ) -> TensorDrift:
        scores = psi(profile.expected, counts)
        finite = values - nonfinite
        counts.setflags(write=False)
        scores.setflags(write=False)
        return TensorDrift(
            tensor=profile.name,
            features=profile.features,
            psi=scores,
            counts=counts,
            values=values,
            nonfinite_ratio=nonfinite / values if values else 0.0,
            out_of_range_ratio=out_of_range / finite if finite else 0.0,
            state=self._state(scores, items),
            items=items,
        )

    def _state(self, scores: np.ndarray, items: int) -> str:
        if items < self.min_items or np.isnan(scores).all():
            return "insufficient"
        worst = float(np.nanmax(scores))
        warning, alert = self.thresholds
        if worst >= alert:
            return "alert"
        if worst >= warning:
            return "warning"
        return "ok"

    def states(self) -> dict[str, str]:
        """tensor -> state, as :meth:`snapshot` would give them now."""
        return {name: drift.state for name, drift in self.snapshot().items()}
