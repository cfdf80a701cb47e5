"""Sub-millisecond latency histograms, per model and per second.

Locust's own statistics round response times to whole milliseconds (and its
CSV files truncate percentiles to integers), which is too coarse to check
targets such as ``p50_ms = 1.5``. The locustfile therefore also records every
request here, in microsecond buckets with 3 significant digits (at most 0.5 %
error), keyed by the wall-clock second the request completed in. Workers ship
their deltas to the master with Locust's worker reports; the master (or the
single local process) writes the merged result as JSON, which the SLO
evaluation and the report read.

Pure Python, no third-party imports: it runs in every Locust process.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1


def bucket_us(latency_ms: float) -> int:
    """Microseconds rounded to 3 significant digits (1234567 -> 1230000)."""
    us = max(0, round(latency_ms * 1000.0))
    if us < 1000:
        return us
    digits = int(math.log10(us)) + 1
    scale = 10 ** (digits - 3)
    return int(round(us / scale) * scale)


class Histogram:
    """Counts per microsecond bucket."""

    __slots__ = ("counts", "total")

    def __init__(self, counts: Mapping[int, int] | None = None) -> None:
        self.counts: dict[int, int] = defaultdict(int)
        self.total = 0
        if counts:
            for key, value in counts.items():
                self.counts[int(key)] += int(value)
                self.total += int(value)

    def add(self, latency_ms: float, count: int = 1) -> None:
        self.counts[bucket_us(latency_ms)] += count
        self.total += count

    def merge(self, other: Histogram) -> None:
        for key, value in other.counts.items():
            self.counts[key] += value
        self.total += other.total

    def percentile_ms(self, fraction: float) -> float | None:
        """Nearest-rank percentile (``fraction`` in (0, 1]) in ms; None when empty."""
        if self.total == 0:
            return None
        rank = max(1, math.ceil(fraction * self.total))
        seen = 0
        for key in sorted(self.counts):
            seen += self.counts[key]
            if seen >= rank:
                return key / 1000.0
        return max(self.counts) / 1000.0

    def mean_ms(self) -> float | None:
        if self.total == 0:
            return None
        return sum(k * v for k, v in self.counts.items()) / self.total / 1000.0

    def to_json(self) -> dict[str, int]:
        return {str(k): v for k, v in sorted(self.counts.items())}


@dataclass
class Second:
    """What completed during one wall-clock second for one request name."""

    latency: Histogram = field(default_factory=Histogram)  # successful requests only
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # by status
    response_bytes: int = 0

    @property
    def successes(self) -> int:
        return self.latency.total

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


class LatencyRecorder:
    """Per (second, name) histograms plus failure counts by gRPC status code name."""

    def __init__(self) -> None:
        self.seconds: dict[tuple[int, str], Second] = {}
        self.start_time: float | None = None
        self.stop_time: float | None = None
        #: unix second -> user count, sampled by whoever runs the users (informative).
        self.users: dict[int, int] = {}

    def _slot(self, second: int, name: str) -> Second:
        slot = self.seconds.get((second, name))
        if slot is None:
            slot = self.seconds[(second, name)] = Second()
        return slot

    def record(
        self,
        name: str,
        latency_ms: float,
        *,
        at: float,
        status: str | None = None,
        response_bytes: int = 0,
    ) -> None:
        """One request named ``name`` that completed at unix time ``at``.

        ``status`` is None for a success, else the gRPC status code name
        (``UNAVAILABLE``) or ``STREAM_ERROR`` for an in-stream error message.
        """
        slot = self._slot(int(at), name)
        if status is None:
            slot.latency.add(latency_ms)
            slot.response_bytes += response_bytes
        else:
            slot.failures[status] += 1

    def empty(self) -> bool:
        return not self.seconds

    # Serialization (worker -> master deltas, and the final JSON file) -----

    def to_json(self) -> dict[str, Any]:
        rows = []
        for (second, name), slot in sorted(self.seconds.items()):
            rows.append(
                {
                    "t": second,
                    "name": name,
                    "latency_us": slot.latency.to_json(),
                    "failures": dict(sorted(slot.failures.items())),
                    "bytes": slot.response_bytes,
                }
            )
        return {
            "format": FORMAT_VERSION,
            "start_time": self.start_time,
            "stop_time": self.stop_time,
            "users": {str(k): v for k, v in sorted(self.users.items())},
            "seconds": rows,
        }

    def merge_json(self, data: Mapping[str, Any]) -> None:
        """Add the rows of another recorder's :meth:`to_json` (a worker's delta)."""
        for row in data.get("seconds", ()):
            slot = self._slot(int(row["t"]), str(row["name"]))
            slot.latency.merge(Histogram(row.get("latency_us") or {}))
            for status, count in (row.get("failures") or {}).items():
                slot.failures[status] += int(count)
            slot.response_bytes += int(row.get("bytes") or 0)
        for key in ("start_time", "stop_time"):
            value = data.get(key)
            if value is None:
                continue
            mine = getattr(self, key)
            pick = min if key == "start_time" else max
            setattr(self, key, value if mine is None else pick(mine, value))
        for second, users in (data.get("users") or {}).items():
            self.users[int(second)] = self.users.get(int(second), 0) + int(users)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), separators=(",", ":")))

    @classmethod
    def read(cls, path: str | Path) -> LatencyRecorder:
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported latency file format {data.get('format')!r}")
        recorder = cls()
        recorder.merge_json(data)
        return recorder

    # Queries ------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted({name for _, name in self.seconds})

    def window(self, names: Iterable[str] | None = None, since: float | None = None) -> WindowStats:
        """Totals over the seconds >= ``since`` (all when None) for ``names`` (all when None)."""
        wanted = None if names is None else set(names)
        stats = WindowStats()
        first = None if since is None else math.floor(since)
        for (second, name), slot in self.seconds.items():
            if wanted is not None and name not in wanted:
                continue
            if first is not None and second < first:
                continue
            stats.latency.merge(slot.latency)
            for status, count in slot.failures.items():
                stats.failures[status] += count
            stats.response_bytes += slot.response_bytes
        return stats

    def timeline(self, names: Iterable[str] | None = None) -> list[tuple[int, WindowStats]]:
        """``(second, totals)`` for every second from the first to the last, gaps included."""
        wanted = None if names is None else set(names)
        per_second: dict[int, WindowStats] = {}
        for (second, name), slot in self.seconds.items():
            if wanted is not None and name not in wanted:
                continue
            stats = per_second.setdefault(second, WindowStats())
            stats.latency.merge(slot.latency)
            for status, count in slot.failures.items():
                stats.failures[status] += count
            stats.response_bytes += slot.response_bytes
        if not per_second:
            return []
        lo, hi = min(per_second), max(per_second)
        return [(s, per_second.get(s, WindowStats())) for s in range(lo, hi + 1)]


@dataclass
class WindowStats:
    latency: Histogram = field(default_factory=Histogram)
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    response_bytes: int = 0

    @property
    def successes(self) -> int:
        return self.latency.total

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def requests(self) -> int:
        return self.successes + self.failed

    @property
    def failure_ratio(self) -> float:
        return self.failed / self.requests if self.requests else 0.0
