"""The inference pipeline: an ordered chain of stages every request passes through.

Stages
------
A :class:`Stage` does one job. It is called with the :class:`InferenceCall` and
returns an awaitable of the request's :class:`~batchwire.core.types.InferenceResult`;
to let the request go on it hands the call to ``self.next``, the rest of the chain.
So a stage may, and this is all the features built on the pipeline need:

1. **answer without going further**: return a result without calling ``next`` (a
   cache hit; only after the resolve stage, since the front end encodes the result
   for the resolved model version), or raise an
   :class:`~batchwire.core.errors.InferenceError` (a refusal, anywhere; the front
   end reports its status and message);
2. **choose where the request goes**: set ``call.version`` (or ``call.model``)
   before the resolve stage, then pass the call on;
3. **send a copy elsewhere without delaying the answer**: ``spawn(self.next,
   call.copy(version=...), what)`` runs the rest of the chain for a copy in a
   background task (its result is dropped, its failure logged), then pass the
   original on;
4. **observe the finished result**: ``await self.next(call)`` and look at what
   comes back or what it raises (``except InferenceError``: re-raise it), then
   return it.

A stage that only acts before passing the call on (1 by raising, 2, 3) is best a
plain ``def __call__`` that ends with ``return self.next(call)``: the chain then
costs a function call per stage, not a coroutine. A stage that awaits (4, or a
refusal that must ask another service) is an ``async def``. Either way a stage
raises only :class:`~batchwire.core.errors.InferenceError` for the caller to see.

The order is :data:`batchwire.server.stages.STAGES`, outermost first: a request
passes the stages in that order and its result comes back through them in reverse.
Adding a stage is one module with its class and one line in that tuple.

Chains
------
:class:`Pipeline` builds one chain per model name, on the first request for it, from
the factories in order: each factory is called with the data plane and the model
name and returns a stage, or None to stay out of that model's chain (not configured:
it costs nothing per request, not even a test). The chain is rebuilt after the model
is loaded or unloaded (its configuration may have changed) and never otherwise, so a
request allocates no stage; it walks ``next`` links set once. Names the repository
does not know share one chain, built with model None, so that stages placed before
resolution (a refusal, an audit) still see requests for them.

Concurrency: loop thread only; a stage's ``__call__`` runs once per request,
possibly interleaved with other requests at every await.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from batchwire.server.inference_call import InferenceCall

if TYPE_CHECKING:
    from batchwire.core.types import InferenceResult
    from batchwire.server.dataplane import DataPlane

__all__ = ["Handler", "InferenceCall", "Pipeline", "Stage", "StageFactory", "spawn"]

log = logging.getLogger(__name__)

#: The rest of a chain: takes the call, returns its result.
Handler = Callable[[InferenceCall], Awaitable["InferenceResult"]]


class Stage:
    """One job of the inference pipeline (see the module docstring for what it may do).

    Subclasses override :meth:`__call__`; ``next`` is set by :class:`Pipeline` when it
    links the chain (a stage instance belongs to one chain). The last stage of a chain
    answers itself and never calls ``next``.
    """

    __slots__ = ("next",)

    def __init__(self) -> None:
        self.next: Handler = _end_of_chain

    def __call__(self, call: InferenceCall) -> Awaitable[InferenceResult]:
        """Pass ``call`` on unchanged (the base class does nothing else)."""
        return self.next(call)


async def _end_of_chain(call: InferenceCall) -> InferenceResult:
    raise RuntimeError(
        f"the pipeline for model '{call.model}' ends without a stage that answers "
        "(the last stage must not await next)"
    )


#: Builds the stage for one model's chain: (data plane, model name or None for names
#: the repository does not know) -> the stage, or None to leave it out of that chain.
StageFactory = Callable[["DataPlane", "str | None"], "Stage | None"]


class Pipeline:
    """The stage chains of one data plane: one per model name, built on first use."""

    def __init__(self, plane: DataPlane, factories: Sequence[StageFactory]) -> None:
        if not factories:
            raise ValueError("a pipeline needs at least one stage (the one that answers)")
        self._plane = plane
        self._factories = tuple(factories)
        #: model name -> the first stage of its chain. Read per request by the data plane.
        self.chains: dict[str, Handler] = {}
        self._unknown: Handler | None = None

    def chain(self, model: str) -> Handler:
        """The chain for ``model``; built now when there is none yet (then kept)."""
        chain = self.chains.get(model)
        if chain is not None:
            return chain
        if not self._plane.registry.versions(model):
            # Unknown (or without a single version): one shared chain, so that requests
            # for arbitrary names cannot grow the table.
            if self._unknown is None:
                self._unknown = self.build(None)
            return self._unknown
        chain = self.chains[model] = self.build(model)
        return chain

    def build(self, model: str | None) -> Handler:
        """A new chain for ``model`` (None: for names the repository does not know)."""
        stages = [
            stage
            for factory in self._factories
            if (stage := factory(self._plane, model)) is not None
        ]
        if not stages:
            raise ValueError(f"no stage of the pipeline serves model '{model}'")
        for stage, after in itertools.pairwise(stages):
            stage.next = after
        return stages[0]

    def forget(self, model: str) -> None:
        """Drop ``model``'s chain (its configuration may have changed): rebuilt on next use."""
        self.chains.pop(model, None)


#: Background copies still running: asyncio keeps only weak references to tasks.
_background: set[asyncio.Task] = set()


def spawn(handler: Handler, call: InferenceCall, what: str) -> asyncio.Task:
    """Run ``handler(call)`` (e.g. ``self.next`` on a copy) without waiting for it.

    For stages that send a copy of a request elsewhere: the whole of ``handler`` runs
    in a task, so the original request neither waits for the copy nor sees its
    errors; the copy's result is dropped and its failure is logged naming ``what``.
    Returns the task (tests await it).
    """
    task = asyncio.ensure_future(_run(handler, call))
    _background.add(task)
    task.add_done_callback(lambda done: _copy_done(done, what))
    return task


async def _run(handler: Handler, call: InferenceCall) -> InferenceResult:
    return await handler(call)


def _copy_done(task: asyncio.Task, what: str) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.warning("%s failed: %s", what, task.exception())
