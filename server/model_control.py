"""Triton's model control modes: which models load at start, and what changes them later.

The mode (``--model-control-mode``, :class:`ModelControlMode`):

* ``none``, the default: every model folder of the repository loads at start and
  the repository is not read again. RepositoryModelLoad and RepositoryModelUnload
  are refused with UNAVAILABLE and Triton's message :data:`CONTROL_DISABLED`.
* ``explicit``: at start only the ``--load-model`` models load (``*`` loads them
  all; no name loads none). A name that is not a model folder of the repository
  stops start-up (:func:`startup_models`), as it stops Triton. After that, load and
  unload requests decide what is served.
* ``poll``: ``none``'s start and ``none``'s refusal (Triton uses the same message),
  plus a :class:`RepositoryPoller` that rescans the repository every
  ``--repository-poll-secs``: it loads a new model folder, reloads a model whose
  files changed and unloads a model whose folder went away (the index then no
  longer lists it).

Which models count for ServerReady follows from the registry: the ones loaded or
asked to load, never the folders nobody asked for; so an explicit server with
nothing loaded is ready, as Triton is. A reload, by the poller or by a request,
follows the registry's rule: a serving model keeps its loaded versions when the new
ones fail, and the failure is logged (and returned to a request).

Model names from requests and ``--load-model`` are checked by
:meth:`~batchwire.server.repository.ModelRepository.model_folder` before anything
is loaded: one folder name, resolving inside the repository
(:mod:`batchwire.server.repository.names`).

Change detection (:func:`fingerprint`): the sorted relative path, size and mtime of
every file in a model folder, read with ``os.stat`` (a linked file counts with its
target; a linked folder is not walked into), and the relative path of every folder.
``__pycache__`` folders are left out, and folder mtimes with them, since loading a
python model writes one. The fingerprint is taken before the load
it leads to, so a change made while a model loads is seen by the next scan. Like
Triton's, polling does not synchronize with whoever edits the repository: a
half-copied model may load and fail, and loads again once its files change.

Concurrency: event loop only. The poller is one task; disk scans run in a worker
thread; a scan's exception is logged and the next scan runs as planned. Stopping
waits for a scan in progress, so that no model is left half loaded at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from batchwire.core.errors import (
    ModelControlDisabledError,
    ModelLoadError,
    ModelNameError,
    ModelNotFoundError,
)
from batchwire.server.registry import ModelRegistry
from batchwire.server.repository import ModelRepository

__all__ = [
    "ALL_MODELS",
    "CONTROL_DISABLED",
    "ModelControlMode",
    "RepositoryPoller",
    "check_control_allowed",
    "fingerprint",
    "startup_models",
]

log = logging.getLogger(__name__)

#: Triton's refusal of load/unload requests, in NONE and in POLL mode alike.
CONTROL_DISABLED = "explicit model load / unload is not allowed if polling is enabled"
#: The ``--load-model`` value that loads every model of the repository.
ALL_MODELS = "*"

#: What :func:`fingerprint` returns: (relative path, size, mtime in ns) per entry, sorted.
Fingerprint = tuple[tuple[str, int, int], ...]


class ModelControlMode(str, enum.Enum):
    """Triton's ``--model-control-mode`` values."""

    NONE = "none"
    POLL = "poll"
    EXPLICIT = "explicit"


def check_control_allowed(mode: ModelControlMode) -> None:
    """Raise ModelControlDisabledError (UNAVAILABLE) unless ``mode`` allows load/unload."""
    if mode is not ModelControlMode.EXPLICIT:
        raise ModelControlDisabledError(CONTROL_DISABLED)


def startup_models(
    mode: ModelControlMode, repository: ModelRepository, load_models: Iterable[str]
) -> list[str] | None:
    """The models to load at start: None for all of them, else the checked names in order.

    Raises ModelLoadError, in one line naming the model, when explicit mode names one
    that is not a model folder inside the repository (start-up stops, as Triton's).
    """
    if mode is not ModelControlMode.EXPLICIT:
        return None
    names = list(dict.fromkeys(load_models))  # de-duplicated, order kept
    if ALL_MODELS in names:
        return None
    for name in names:
        try:
            repository.model_folder(name)
        except (ModelLoadError, ModelNameError) as exc:
            raise ModelLoadError(
                f"cannot load model {name!r} at start (--load-model): {exc}"
            ) from None
    return names


def fingerprint(model_dir: Path) -> Fingerprint:
    """What changes when a model folder's files change (see the module docstring)."""
    rows: list[tuple[str, int, int]] = []
    for folder, dirs, files in os.walk(model_dir):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        # A folder counts by its name alone: its mtime moves when __pycache__ appears.
        rows.extend((os.path.relpath(os.path.join(folder, d), model_dir), 0, 0) for d in dirs)
        for name in files:
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except OSError:  # removed meanwhile, or a dangling link
                continue
            rows.append((os.path.relpath(path, model_dir), st.st_size, st.st_mtime_ns))
    rows.sort()
    return tuple(rows)


class RepositoryPoller:
    """Follows the repository's model folders every ``interval`` seconds (poll mode).

    :meth:`snapshot` records the folders as they are before the start-up load;
    :meth:`start` runs :meth:`scan` every ``interval`` seconds until :meth:`stop`.
    """

    def __init__(self, registry: ModelRegistry, interval: float) -> None:
        if not interval > 0:
            raise ValueError(f"repository poll interval must be > 0 s, got {interval}")
        self.registry = registry
        self.interval = interval
        self._seen: dict[str, Fingerprint] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def snapshot(self) -> None:
        """Record every model folder's fingerprint as the state already served."""
        self._seen = await asyncio.to_thread(self._fingerprints)

    def start(self) -> None:
        """Start polling (event loop only); idempotent."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="batchwire-repository-poll"
            )

    async def stop(self) -> None:
        """Stop polling; a scan in progress ends first (a load is never cut in half)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        try:
            await task
        except asyncio.CancelledError:
            task.cancel()  # stop() itself was cancelled: do not leave the poller behind
            raise

    async def _run(self) -> None:
        while True:
            # The wait between scans is the only place a stop ends the poller.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)
            if self._stopping.is_set():
                return
            try:
                await self.scan()
            except Exception:  # a poll must never take the server down
                log.exception(
                    "model repository poll failed; next poll in %s s", f"{self.interval:g}"
                )

    async def scan(self) -> None:
        """One pass: unload removed models, then load new and changed ones."""
        current = await asyncio.to_thread(self._fingerprints)
        for name in sorted(self._seen.keys() - current.keys()):
            log.info("model '%s': its folder left the repository; unloading it", name)
            with contextlib.suppress(ModelNotFoundError):  # never loaded, or already gone
                await self.registry.unload(name, forget=True)
            del self._seen[name]
        for name, print_ in current.items():
            previous = self._seen.get(name)
            if previous == print_:
                continue
            what = "new folder" if previous is None else "changed"
            log.info("model '%s': %s; loading it", name, what)
            # Recorded first: a model that fails is retried when its files change again,
            # not on every poll.
            self._seen[name] = print_
            try:
                await self.registry.load(name)
            except ModelLoadError:
                pass  # the registry logged why, and what keeps serving
            except Exception:
                log.exception("model '%s' failed to load", name)

    def _fingerprints(self) -> dict[str, Fingerprint]:
        repository = self.registry.repository
        return {name: fingerprint(repository.root / name) for name in repository.model_names()}
