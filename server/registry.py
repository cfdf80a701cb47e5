"""The models being served: load, unload, look up, and report their state.

Concurrency: every method runs on the server's event loop. Loading a model
file is blocking work and runs in a worker thread; the registry's tables are
only mutated on the loop, so lookups need no lock. One asyncio lock per model
name serializes load/unload of that model.

Reloads follow Triton's rule: the new versions load (and warm up) next to the serving
ones and replace them only once all are up; when they fail, a model that has a ready
version keeps its loaded versions unchanged, and their RepositoryIndex reason says why
the reload failed (Triton reports a failed update the same way: the version stays
READY, with a reason) until the next load of the model.

No request is lost to a reload or an unload. The swap is one assignment on the loop,
and in the same loop step, before any await, each replaced version gives up its
batcher (``ServedModel.batcher`` None, state UNLOADING): a request resolved from then
on gets the new versions. A request that was resolved before the swap is either in
its batcher's queue already (the inference stages do not await between resolving a
version and submitting to its batcher), and the batcher drains it, or it finds no
batcher at submit and is resolved once more, to the versions that serve now (see
request_stages.Submit). Replaced
versions drain and stop concurrently; the folder they were loaded from, when it was a
load request's private override folder (``ModelEntry.workdir``), is removed once they
are stopped, as it is when the model is unloaded or the server stops.

A loaded version whose instances are all hung (the batcher's hang watchdog, config
parameter ``batchwire.hang_timeout_ms``) is not ready until a batch returns:
ModelReady says false and listeners (health) are told; it stays the model's
latest version, so requests reach its batcher, which refuses them naming the hang.
RepositoryIndex agrees with ModelReady (:meth:`ServedModel.status`): the version is
listed UNAVAILABLE with a reason naming the hang. Server readiness does not change:
one stuck model does not take the server down.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from batchwire.batching import ModelBatcher
from batchwire.batching.batcher import DEFAULT_HANG_TIMEOUT_MS, HANG_TIMEOUT_KEY
from batchwire.core.errors import (
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
)
from batchwire.core.observer import BatchObserver
from batchwire.core.spec import ModelSpec
from batchwire.protos import model_config_pb2
from batchwire.server.repository import ModelEntry, ModelRepository, ModelVersionSource
from batchwire.server.repository.fingerprint import artifact_sha256, config_sha256
from batchwire.server.repository.overrides import remove_override_folder

log = logging.getLogger(__name__)


class ModelState(enum.Enum):
    """Triton's model states, as RepositoryIndex reports them."""

    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class ServedModel:
    """One version of one model and the batcher that runs it."""

    name: str
    version: str
    state: ModelState
    reason: str = ""
    spec: ModelSpec | None = None
    config: model_config_pb2.ModelConfig | None = None
    batcher: ModelBatcher | None = None
    #: What the repository found for this version (its folder), once loading began.
    source: ModelVersionSource | None = None
    #: SHA-256 of the model artifact and of the effective config (hex), taken while
    #: loading when the registry's ``fingerprints`` is on (the audit log), else "".
    artifact_sha256: str = ""
    config_sha256: str = ""

    @property
    def ready(self) -> bool:
        """Loaded, and not every instance hung (see the batcher's hang watchdog)."""
        return self.state is ModelState.READY and not (
            self.batcher is not None and self.batcher.hung
        )

    def status(self) -> tuple[str, str]:
        """(state, reason) as RepositoryIndex lists them; a hung version is UNAVAILABLE."""
        batcher = self.batcher
        if self.state is ModelState.READY and batcher is not None and batcher.hung:
            timeout = self.spec.parameters.get(HANG_TIMEOUT_KEY) if self.spec else None
            return ModelState.UNAVAILABLE.value, (
                f"hung: its {batcher.hung_instances} instance(s) have each been running a "
                f"batch for more than {HANG_TIMEOUT_KEY}="
                f"{timeout or DEFAULT_HANG_TIMEOUT_MS} ms; not ready until a batch returns"
            )
        return self.state.value, self.reason


@dataclass(slots=True)
class _ModelVersions:
    #: version string -> served version, in ascending numeric order.
    versions: dict[str, ServedModel] = field(default_factory=dict)
    #: Set when the model folder itself could not be read (bad config.pbtxt...).
    error: str = ""
    #: The highest ready version, the one an empty version string selects.
    latest: ServedModel | None = None
    #: Unloaded on request: listed by the index, not counted against server readiness.
    unloaded: bool = False
    #: The private override folder the versions were loaded from (ModelEntry.workdir).
    workdir: Path | None = None

    def refresh_latest(self) -> None:
        ready = [m for m in self.versions.values() if m.ready]
        self.latest = max(ready, key=lambda m: int(m.version)) if ready else None


#: Called with (model name, ready) whenever a model's readiness may have changed.
StateListener = Callable[[str, bool], None]
#: Builds the observer that receives a model version's batch and request events.
ObserverFactory = Callable[[ModelSpec], BatchObserver]


class ModelRegistry:
    """Loads models from a :class:`ModelRepository` and serves lookups."""

    def __init__(
        self,
        repository: ModelRepository,
        *,
        observer_factory: ObserverFactory | None = None,
    ) -> None:
        self.repository = repository
        self._observer_factory = observer_factory
        self._models: dict[str, _ModelVersions] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._listeners: list[StateListener] = []
        self._closed = False
        #: Hash each version's artifact and config while loading it (the audit log's
        #: ``model_sha256`` and ``config_sha256``); off, loading reads nothing extra.
        self.fingerprints = False

    def add_listener(self, listener: StateListener) -> None:
        """Call ``listener(name, ready)`` after every load/unload of a model."""
        self._listeners.append(listener)

    # Lookups (hot path) -------------------------------------------------

    def get(self, name: str, version: str = "") -> ServedModel:
        """The ready version ``version`` of ``name`` (latest ready when empty).

        Raises ModelNotFoundError for an unknown model or version and
        ModelNotReadyError for one that is not ready.
        """
        entry = self._models.get(name)
        if entry is None:
            raise ModelNotFoundError(f"model '{name}' is not in the model repository")
        if not version:
            served = entry.latest
            if served is None:
                reason = entry.error or self._unready_reason(entry)
                raise ModelNotReadyError(f"model '{name}' has no ready version: {reason}")
            return served
        served = entry.versions.get(version)
        if served is None:
            known = ", ".join(entry.versions) or "none"
            raise ModelNotFoundError(
                f"model '{name}' has no version '{version}' (available versions: {known})"
            )
        if served.state is not ModelState.READY:  # hung: the batcher refuses, saying so
            raise ModelNotReadyError(
                f"model '{name}' version '{version}' is {served.state.value}"
                + (f": {served.reason}" if served.reason else "")
            )
        return served

    def find(self, name: str, version: str = "") -> ServedModel:
        """Like :meth:`get` but returns a version in any state (for metadata and readiness)."""
        entry = self._models.get(name)
        if entry is None:
            raise ModelNotFoundError(f"model '{name}' is not in the model repository")
        if not version:
            if entry.latest is not None:
                return entry.latest
            if entry.versions:
                return entry.versions[max(entry.versions, key=int)]
            raise ModelNotReadyError(f"model '{name}' has no loadable version: {entry.error}")
        served = entry.versions.get(version)
        if served is None:
            known = ", ".join(entry.versions) or "none"
            raise ModelNotFoundError(
                f"model '{name}' has no version '{version}' (available versions: {known})"
            )
        return served

    def versions(self, name: str) -> list[str]:
        entry = self._models.get(name)
        return list(entry.versions) if entry else []

    def index(self) -> list[ServedModel]:
        """Every known model version, plus one entry per model that failed as a whole."""
        rows: list[ServedModel] = []
        for name in sorted(self._models):
            entry = self._models[name]
            if entry.error and not entry.versions:
                rows.append(ServedModel(name, "", ModelState.UNAVAILABLE, entry.error))
            rows.extend(entry.versions.values())
        return rows

    @property
    def all_ready(self) -> bool:
        """True when every model the repository holds (and not unloaded) has a ready version."""
        return all(e.latest is not None for e in self._models.values() if not e.unloaded)

    def ready_models(self) -> list[ServedModel]:
        return [m for e in self._models.values() for m in e.versions.values() if m.ready]

    @staticmethod
    def _unready_reason(entry: _ModelVersions) -> str:
        reasons = [
            f"version {m.version}: {m.reason or m.state.value}" for m in entry.versions.values()
        ]
        return "; ".join(reasons) or "no versions found"

    # Lifecycle ----------------------------------------------------------

    def names(self) -> list[str]:
        """Every model the registry knows (loaded, failed or unloaded), sorted."""
        return sorted(self._models)

    async def load_all(self, names: Iterable[str] | None = None) -> None:
        """Load every model in the repository, or only ``names``; failures are recorded."""
        if names is None:
            entries = await asyncio.to_thread(self.repository.discover)
        else:
            entries = [
                await asyncio.to_thread(self.repository.discover_model, name) for name in names
            ]
        for entry in entries:
            await self._apply(entry)

    async def load(self, name: str, entry: ModelEntry | None = None) -> ServedModel:
        """(Re)load one model; raises ModelLoadError when it fails.

        ``entry``: the versions to serve, already discovered (a load request's overrides,
        :meth:`ModelRepository.discover_override`); None reads the repository's folder.
        A model that is serving keeps its loaded versions when the reload fails.
        """
        if entry is None:
            entry = await asyncio.to_thread(self.repository.discover_model, name)
        assert entry.name == name, (entry.name, name)
        failure = await self._apply(entry)
        if failure:
            raise ModelLoadError(failure)
        latest = self._models[name].latest
        assert latest is not None
        return latest

    async def unload(self, name: str, *, forget: bool = False) -> None:
        """Stop serving ``name``: drain its queues and release its instances.

        The index keeps listing it as unloaded, unless ``forget`` (its folder left the
        repository): then the registry no longer knows it at all.
        """
        if name not in self._models:
            raise ModelNotFoundError(f"model '{name}' is not in the model repository")
        async with self._lock(name):
            entry = self._models[name]
            entry.unloaded = True
            entry.latest = None
            await self._stop(self._detach(entry.versions.values()))
            await self._remove_workdir(entry)
            if forget and self._models.get(name) is entry:
                del self._models[name]
        self._notify(name, False)

    async def close(self) -> None:
        """Unload every model (server shutdown); later loads are refused."""
        self._closed = True
        for name in list(self._models):
            await self.unload(name)
        self._models.clear()

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _apply(self, entry: ModelEntry) -> str:
        """Serve the versions ``entry`` describes; returns why not ("" when all are up).

        Triton's reload rule: a model that has a ready version keeps its loaded
        versions, unchanged, when the new ones fail (bad config, a version that does
        not load); the new ones are stopped, the failure is logged and returned, and
        the reason of the versions that keep serving says it.
        """
        name = entry.name
        async with self._lock(name):
            if self._closed:
                if entry.workdir is not None:
                    await asyncio.to_thread(remove_override_folder, entry.workdir)
                return f"model '{name}' was not loaded: the server is shutting down"
            old = self._models.get(name)
            fresh = _ModelVersions(error=entry.error or "", workdir=entry.workdir)
            if entry.error:
                log.error("model '%s' is unavailable: %s", name, entry.error)
            sources: list[ModelVersionSource] = list(entry.versions or [])
            for source in sources:
                fresh.versions[source.version] = ServedModel(
                    name, source.version, ModelState.LOADING, spec=source.spec, config=source.config
                )
            self._models[name] = fresh if old is None else old
            for source in sources:
                fresh.versions[source.version] = await self._load_version(source)
            fresh.refresh_latest()
            failure = fresh.error or "; ".join(
                f"model '{name}' version {m.version}: {m.reason}"
                for m in fresh.versions.values()
                if not m.ready
            )
            if failure and old is not None and old.latest is not None:
                log.error(
                    "model '%s' failed to reload; its loaded version(s) keep serving: %s",
                    name,
                    failure,
                )
                for served in old.versions.values():
                    if served.state is ModelState.READY:
                        served.reason = f"failed to reload, this version keeps serving: {failure}"
                await self._stop(self._detach(fresh.versions.values()))
                await self._remove_workdir(fresh)
                return failure
            # The swap, and the old versions giving up their batchers, in one loop step:
            # every request resolved from here on reaches a new version.
            self._models[name] = fresh
            if old is not None:
                await self._stop(self._detach(old.versions.values()))
                if old.workdir != fresh.workdir:
                    await self._remove_workdir(old)
            if fresh.latest is None:  # nothing runs from its override folder
                await self._remove_workdir(fresh)
        self._notify(name, fresh.latest is not None)
        return failure

    async def _load_version(self, source: ModelVersionSource) -> ServedModel:
        served = ServedModel(
            source.name,
            source.version,
            ModelState.LOADING,
            spec=source.spec,
            config=source.config,
            source=source,
        )
        try:
            if self.fingerprints:
                served.artifact_sha256, served.config_sha256 = await asyncio.to_thread(
                    _fingerprint, source
                )
            model = await asyncio.to_thread(self.repository.load, source)
            observer = self._observer_factory(source.spec) if self._observer_factory else None
            batcher = ModelBatcher(
                model, observer=observer, intra_op_threads=self.repository.intra_op_threads
            )
            await batcher.start()
        except ModelLoadError as exc:
            served.state, served.reason = ModelState.UNAVAILABLE, str(exc)
            log.error("model '%s' version %s failed to load: %s", source.name, source.version, exc)
            return served
        except Exception as exc:  # a model's own code may raise anything while loading
            served.state = ModelState.UNAVAILABLE
            served.reason = f"{type(exc).__name__}: {exc}"
            log.exception("model '%s' version %s failed to load", source.name, source.version)
            return served
        batcher.on_hang_change = partial(self._hang_changed, source.name)
        served.batcher = batcher
        served.state = ModelState.READY
        log.info(
            "model '%s' version %s is ready on %s",
            source.name,
            source.version,
            ", ".join(str(d) for d in batcher.devices),
        )
        return served

    @staticmethod
    def _detach(versions: Iterable[ServedModel]) -> list[tuple[ServedModel, ModelBatcher]]:
        """Take each version's batcher away now, before any await; state UNLOADING.

        From then on a resolved request finds no batcher (not ready) instead of reaching
        one that is stopping, while the batcher still answers what it holds.
        """
        detached = []
        for served in versions:
            if served.batcher is not None:
                detached.append((served, served.batcher))
                served.batcher = None
                served.state = ModelState.UNLOADING
        return detached

    @staticmethod
    async def _stop(detached: list[tuple[ServedModel, ModelBatcher]]) -> None:
        """Drain and stop detached batchers, all at once; then mark their versions unloaded."""
        results = await asyncio.gather(
            *(batcher.stop(drain=True) for _, batcher in detached), return_exceptions=True
        )
        for (served, _), result in zip(detached, results, strict=True):
            if isinstance(result, BaseException):
                log.error(
                    "error while stopping model '%s' version %s",
                    served.name,
                    served.version,
                    exc_info=result,
                )
            served.state = ModelState.UNAVAILABLE
            served.reason = "unloaded"

    @staticmethod
    async def _remove_workdir(entry: _ModelVersions) -> None:
        """Remove the private override folder ``entry``'s versions were loaded from."""
        if entry.workdir is not None:
            workdir, entry.workdir = entry.workdir, None
            await asyncio.to_thread(remove_override_folder, workdir)
            log.info("removed the override folder %s", workdir)

    def _hang_changed(self, name: str) -> None:
        """A version's batcher became hung or recovered: readiness may have changed."""
        entry = self._models.get(name)
        latest = entry.latest if entry is not None else None
        self._notify(name, latest is not None and latest.ready)

    def _notify(self, name: str, ready: bool) -> None:
        for listener in self._listeners:
            try:
                listener(name, ready)
            except Exception:
                log.exception("model state listener failed for '%s'", name)


def _fingerprint(source: ModelVersionSource) -> tuple[str, str]:
    """(artifact SHA-256, config SHA-256) of ``source``, read off the loop."""
    return artifact_sha256(source), config_sha256(source.config)
