"""The drift stage: live inputs and outputs counted into each version's reference bins.

A model version has drift statistics when it has a reference profile
(:mod:`batchwire.telemetry.drift_profile`): the file ``drift_profile.json`` in its
version folder (``batchwire drift profile`` writes it), or else the file the model's
config names in ``batchwire.drift_profile`` (a path inside the model folder, shared by
its versions). ``--drift-statistics=false`` turns the stage off for the whole server.
A profile that does not load or does not match the model's tensors is logged as an
error when the model's chain is built and that version is served without statistics;
drift never changes readiness.

Rules
-----
1. **What is counted.** Every request answered successfully by a version with a
   profile (response cache hits included: they are traffic the model was asked for;
   shadow copies included: a shadow version's drift is seen beside the primary's):
   its inputs and its outputs, each tensor the profile names.
2. **Off the loop.** Per request the stage appends the request's input and output
   dicts (references, no copy) to its version's pending chunk. A chunk is handed to
   the drift thread when it holds :data:`CHUNK_REQUESTS` requests, or
   :data:`FLUSH_S` after its first request, whichever comes first. The thread
   concatenates each tensor once and counts the whole chunk with numpy
   (:meth:`~batchwire.telemetry.drift_window.DriftWindow.add`): never a Python loop
   over items or elements.
3. **Never in the way.** When more than :data:`MAX_PENDING_CHUNKS` chunks wait for
   the thread, a new chunk is dropped and counted
   (``batchwire_drift_dropped_requests_total``): statistics lose a sample, requests
   lose nothing.
4. **Window and thresholds** per model, from config parameters:
   ``batchwire.drift_window_requests`` (default 10000), ``batchwire.drift_window_secs``
   (default 600), ``batchwire.drift_thresholds`` ("warning,alert" PSI, default
   "0.1,0.25"). A state change of a tensor (ok, warning, alert) is logged: WARNING
   into warning or alert, INFO back to ok.
5. **Reloads.** A load or unload of the model rebuilds its chain and starts fresh
   windows for its versions (the old counts described the old versions).

Concurrency: the stage runs on the loop thread; windows are filled by the drift
thread and read by the metrics thread (each window has its own lock).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from batchwire.core.errors import InferenceError
from batchwire.server.pipeline import Stage
from batchwire.telemetry.drift_profile import (
    PROFILE_FILE,
    DriftProfile,
    ProfileError,
    check_profile,
    load_profile,
)
from batchwire.telemetry.drift_window import DEFAULT_THRESHOLDS, DriftWindow

if TYPE_CHECKING:
    import numpy as np

    from batchwire.core.types import InferenceResult
    from batchwire.server.dataplane import DataPlane
    from batchwire.server.inference_call import InferenceCall
    from batchwire.server.registry import ServedModel

__all__ = [
    "CHUNK_REQUESTS",
    "FLUSH_S",
    "MAX_PENDING_CHUNKS",
    "DriftCounts",
    "DriftStage",
    "drift",
    "parse_thresholds",
]

log = logging.getLogger(__name__)

PROFILE_KEY = "batchwire.drift_profile"
WINDOW_REQUESTS_KEY = "batchwire.drift_window_requests"
WINDOW_SECS_KEY = "batchwire.drift_window_secs"
THRESHOLDS_KEY = "batchwire.drift_thresholds"
DEFAULT_WINDOW_REQUESTS = 10000
DEFAULT_WINDOW_SECS = 600.0

#: Requests per chunk handed to the drift thread.
CHUNK_REQUESTS = 64
#: Seconds a chunk waits for more requests before it is handed over anyway.
FLUSH_S = 0.5
#: Chunks waiting for the drift thread past which new ones are dropped.
MAX_PENDING_CHUNKS = 64

_Pair = tuple[Mapping[str, "np.ndarray"], Mapping[str, "np.ndarray"]]


def parse_thresholds(text: str) -> tuple[float, float]:
    """``batchwire.drift_thresholds``: "warning,alert", two PSI values, 0 < warning <= alert."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 2 or not 0 < values[0] <= values[1] < float("inf"):
        raise ValueError(
            f"expected two PSI thresholds 'warning,alert' with 0 < warning <= alert, got '{text}'"
        )
    return values[0], values[1]


def parse_window_requests(text: str) -> int:
    """``batchwire.drift_window_requests``: requests in the window, at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"expected a number of requests >= 1, got '{text}'")
    return value


def parse_window_secs(text: str) -> float:
    """``batchwire.drift_window_secs``: seconds the window spans, above 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise ValueError(f"expected a number of seconds above 0, got '{text}'")
    return value


def parse_profile_path(text: str) -> str:
    """``batchwire.drift_profile``: a relative path inside the model folder."""
    path = Path(text)
    if not text or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"expected a path inside the model folder, got '{text}'")
    return text


class DriftCounts:
    """The drift thread and what it was given: windows by (model, version), drops.

    One per data plane (``DataPlane.drift``); the metrics read :attr:`windows` and
    :attr:`dropped` at scrape time.
    """

    def __init__(self) -> None:
        #: (model, version) -> its window (replaced when the model's chain is rebuilt).
        self.windows: dict[tuple[str, str], DriftWindow] = {}
        #: (model, version) -> requests whose chunk was dropped (the thread was behind).
        self.dropped: dict[tuple[str, str], int] = {}
        self._queue: queue.SimpleQueue[tuple[str, str, DriftWindow, list[_Pair]] | None] = (
            queue.SimpleQueue()
        )
        #: Chunks handed over (loop thread only) and counted (drift thread only): two
        #: counters, so that neither thread writes what the other writes.
        self._handed = 0
        self._counted = 0
        self._thread: threading.Thread | None = None
        self._states: dict[tuple[str, str, str], str] = {}

    def hand_over(self, model: str, version: str, window: DriftWindow, chunk: list[_Pair]) -> None:
        """Queue ``chunk`` for counting (loop thread); dropped and counted when behind."""
        if self._handed - self._counted >= MAX_PENDING_CHUNKS:
            key = (model, version)
            self.dropped[key] = self.dropped.get(key, 0) + len(chunk)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="batchwire-drift", daemon=True)
            self._thread.start()
        self._handed += 1
        self._queue.put((model, version, window, chunk))

    def close(self) -> None:
        """Stop the thread after the chunks already queued."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5.0)
            self._thread = None

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            model, version, window, chunk = item
            try:
                tensors: dict[str, list[np.ndarray]] = {}
                for inputs, outputs in chunk:
                    for source in (inputs, outputs):
                        for name, array in source.items():
                            if name in window.profile.tensors:
                                tensors.setdefault(name, []).append(array)
                window.add(tensors, len(chunk))
                self._log_states(model, version, window)
            except Exception:  # a statistics bug must not stop the thread
                log.exception("drift statistics of model '%s' version %s failed", model, version)
            finally:
                self._counted += 1

    def _log_states(self, model: str, version: str, window: DriftWindow) -> None:
        for tensor, state in window.states().items():
            key = (model, version, tensor)
            before = self._states.get(key, "ok")
            if state == before or state == "insufficient":
                continue
            self._states[key] = state
            level = logging.INFO if state == "ok" else logging.WARNING
            log.log(
                level,
                "drift of model '%s' version %s tensor '%s': %s -> %s (PSI thresholds %s)",
                model,
                version,
                tensor,
                before,
                state,
                "/".join(str(t) for t in window.thresholds),
            )


class _Version:
    __slots__ = ("chunk", "model", "timer", "version", "window")

    def __init__(self, model: str, version: str, window: DriftWindow) -> None:
        self.model = model
        self.version = version
        self.window = window
        self.chunk: list[_Pair] = []
        self.timer: asyncio.TimerHandle | None = None


class DriftStage(Stage):
    """Counts one model's versions' traffic into their drift windows (module docstring)."""

    __slots__ = ("_counts", "_versions")

    def __init__(self, counts: DriftCounts, versions: dict[str, _Version]) -> None:
        super().__init__()
        self._counts = counts
        self._versions = versions

    async def __call__(self, call: InferenceCall) -> InferenceResult:
        result = await self.next(call)
        served = call.served
        entry = self._versions.get(served.version) if served is not None else None
        if entry is not None and call.request is not None:
            chunk = entry.chunk
            chunk.append((call.request.inputs, result.outputs))
            if len(chunk) >= CHUNK_REQUESTS:
                self._flush(entry)
            elif entry.timer is None:
                entry.timer = asyncio.get_running_loop().call_later(FLUSH_S, self._flush, entry)
        return result

    def _flush(self, entry: _Version) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if entry.chunk:
            chunk, entry.chunk = entry.chunk, []
            self._counts.hand_over(entry.model, entry.version, entry.window, chunk)


def _profile_for(served: ServedModel) -> DriftProfile | None:
    """``served``'s profile (see the module docstring), None when it has none or a bad one."""
    source = served.source
    if source is None or served.spec is None:
        return None
    path = source.path / PROFILE_FILE
    if not path.is_file():
        named = served.spec.parameters.get(PROFILE_KEY)
        if not named:
            return None
        path = source.path.parent / parse_profile_path(named)
    try:
        profile = load_profile(path)
    except (ProfileError, OSError) as exc:
        log.error(
            "model '%s' version %s is served without drift statistics: %s",
            served.name,
            served.version,
            exc,
        )
        return None
    problems = check_profile(profile, served.spec)
    if problems:
        log.error(
            "model '%s' version %s is served without drift statistics: %s does not match "
            "the model: %s",
            served.name,
            served.version,
            path,
            "; ".join(problems),
        )
        return None
    return profile


def drift(plane: DataPlane, model: str | None) -> Stage | None:
    """The stage for ``model``'s chain when one of its ready versions has a profile."""
    counts = plane.drift
    if counts is None or model is None:
        return None
    for key in [k for k in counts.windows if k[0] == model]:
        del counts.windows[key]  # the model was (re)loaded or unloaded: fresh windows
    registry = plane.registry
    versions: dict[str, _Version] = {}
    for version in registry.versions(model):
        try:
            served = registry.find(model, version)
        except InferenceError:
            continue
        if not served.ready or served.spec is None:
            continue
        profile = _profile_for(served)
        if profile is None:
            continue
        parameters = served.spec.parameters
        # Checked at load (batchwire.server.repository.params): bad values never get here.
        window = DriftWindow(
            profile,
            window_requests=parse_window_requests(
                parameters.get(WINDOW_REQUESTS_KEY, str(DEFAULT_WINDOW_REQUESTS))
            ),
            window_seconds=parse_window_secs(
                parameters.get(WINDOW_SECS_KEY, str(DEFAULT_WINDOW_SECS))
            ),
            thresholds=parse_thresholds(parameters[THRESHOLDS_KEY])
            if THRESHOLDS_KEY in parameters
            else DEFAULT_THRESHOLDS,
        )
        counts.windows[(model, version)] = window
        versions[version] = _Version(model, version, window)
    return DriftStage(counts, versions) if versions else None
