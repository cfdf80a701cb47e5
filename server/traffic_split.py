"""Weighted traffic split between a model's versions (config parameter ``batchwire.traffic``).

A model serving several versions (``version_policy`` ``all``, ``specific``, or
``latest { num_versions: N }``) may declare how requests that name no version are
shared among them::

    parameters { key: "batchwire.traffic" value: { string_value: "1:90,2:10" } }

Rules:

- The value is ``version:weight`` pairs separated by commas: versions are positive
  integers, each named once; weights are integers >= 0, at least one of them > 0. A
  value that does not parse is a load error naming the parameter (checked with the
  other ``batchwire.*`` parameters, :mod:`batchwire.server.repository.params`).
- A request that names a version (``model_version``) gets that version: the split
  applies only to requests that leave the choice to the server.
- A request carrying the request parameter ``routing_key`` (a string) is assigned by
  a hash of the key (BLAKE2b, 64 bits, modulo the total weight): the same key lands
  on the same version for as long as the split is the same, so one user sees one
  model. Without a key each request is assigned at random, in proportion to the
  weights.
- Only versions that are loaded and ready when the model's chain is built take part;
  the weights of the others are left out, and a split none of whose versions serve
  leaves the model's usual rule (its latest ready version). The chain is rebuilt at
  every load and unload of the model, so a split changed by a reload (a
  RepositoryModelLoad with a ``config`` override, or poll mode reading the edited
  ``config.pbtxt``) applies from the first request after the swap, with no restart
  and nothing lost.
- The response's ``model_version`` says which version answered. The split in force
  is in ModelConfig (the parameter) and on ``/metrics``
  (``batchwire_traffic_weight{model,version}``); requests routed are counted in
  ``batchwire_routed_requests_total{model,version,route}`` with route ``split``
  (random), ``sticky`` (by routing key) or ``pinned`` (the caller named the version).

- With ``batchwire.rollback`` rules (:mod:`batchwire.server.rollback`) the split watches
  its canaries and falls back to its stable version when a rule fires.

Cost: a model without the parameter has no stage in its chain. With one, a request
costs a random draw or a hash, a bisection over the cumulative weights and a dict
increment.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import random
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batchwire.core.errors import InferenceError, StatusCode
from batchwire.server.pipeline import Stage
from batchwire.server.rollback import ROLLBACK_KEY, RollbackGate, parse_rollback

if TYPE_CHECKING:
    from batchwire.core.types import InferenceResult
    from batchwire.server.dataplane import DataPlane
    from batchwire.server.inference_call import InferenceCall

__all__ = ["ROUTING_KEY", "TRAFFIC_KEY", "TrafficSplit", "parse_traffic", "traffic_split"]

log = logging.getLogger(__name__)

#: The config parameter holding the split.
TRAFFIC_KEY = "batchwire.traffic"
#: The request parameter that makes assignment sticky.
ROUTING_KEY = "routing_key"


@dataclass(frozen=True, slots=True)
class TrafficSplit:
    """Versions and their weights, in the order given; ``pick`` maps a point to one."""

    versions: tuple[str, ...]
    weights: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.weights)

    def cumulative(self) -> list[int]:
        """Upper bounds of each version's range within ``[0, total)``."""
        bounds, running = [], 0
        for weight in self.weights:
            running += weight
            bounds.append(running)
        return bounds

    def keeping(self, versions: set[str]) -> TrafficSplit | None:
        """The split over the versions also in ``versions`` (None if no weight is left)."""
        kept = [(v, w) for v, w in zip(self.versions, self.weights, strict=True) if v in versions]
        if not any(w for _, w in kept):
            return None
        return TrafficSplit(tuple(v for v, _ in kept), tuple(w for _, w in kept))

    def describe(self) -> str:
        return ",".join(f"{v}:{w}" for v, w in zip(self.versions, self.weights, strict=True))


def parse_traffic(text: str) -> TrafficSplit:
    """The split ``text`` declares; raises ValueError saying what is wrong."""
    versions: list[str] = []
    weights: list[int] = []
    for part in text.split(","):
        version, colon, weight = part.strip().partition(":")
        version, weight = version.strip(), weight.strip()
        if not colon or not version.isdigit() or not weight.isdigit():
            raise ValueError(
                f"'{part.strip()[:40]}' is not version:weight (expected e.g. '1:90,2:10', "
                "integer versions >= 1 and integer weights >= 0)"
            )
        if int(version) < 1:
            raise ValueError(f"version {version} must be >= 1")
        canonical = str(int(version))
        if canonical in versions:
            raise ValueError(f"version {canonical} is given twice")
        versions.append(canonical)
        weights.append(int(weight))
    if not any(weights):
        raise ValueError(f"'{text[:60]}' gives every version weight 0 (expected one > 0)")
    return TrafficSplit(tuple(versions), tuple(weights))


class TrafficSplitStage(Stage):
    """Chooses the version of requests that name none (see the module docstring)."""

    __slots__ = ("_bounds", "_counts", "_model", "_random", "_total", "_versions", "split")

    def __init__(self, plane: DataPlane, model: str, split: TrafficSplit) -> None:
        super().__init__()
        self.split = split
        self._model = model
        self._versions = split.versions
        self._bounds = split.cumulative()
        self._total = split.total
        self._random = random.random
        self._counts = plane.routed_requests

    def __call__(self, call: InferenceCall) -> Awaitable[InferenceResult]:
        self._route(call)
        return self.next(call)

    def _route(self, call: InferenceCall) -> None:
        counts = self._counts
        if call.version:
            key = (self._model, call.version, "pinned")
            counts[key] = counts.get(key, 0) + 1
            return
        routing_key = call.codec.routing_key(call.message)
        if routing_key:
            digest = hashlib.blake2b(routing_key.encode(), digest_size=8).digest()
            point, route = int.from_bytes(digest, "little") % self._total, "sticky"
        else:
            point, route = int(self._random() * self._total), "split"
        version = self._versions[bisect.bisect_right(self._bounds, point)]
        call.version = version
        key = (self._model, version, route)
        counts[key] = counts.get(key, 0) + 1


class GatedTrafficSplitStage(TrafficSplitStage):
    """A split with a rollback gate (:mod:`batchwire.server.rollback`).

    Watches the outcome of requests answered by canary versions (while the gate has an
    ``error_ratio`` rule) and, once the gate has fired, sends every request that names no
    version to the stable version (route ``rollback``).
    """

    __slots__ = ("_canaries", "_gate", "_plane", "_stable")

    def __init__(
        self, plane: DataPlane, model: str, split: TrafficSplit, gate: RollbackGate
    ) -> None:
        super().__init__(plane, model, split)
        self._gate = gate
        self._plane = plane
        # The stable version: the largest weight, the lowest version among equals.
        self._stable = min(
            split.versions, key=lambda v: (-split.weights[split.versions.index(v)], int(v))
        )
        self._canaries = frozenset(split.versions) - {self._stable}

    def __call__(self, call: InferenceCall) -> Awaitable[InferenceResult]:
        if self._gate.fired:
            if not call.version:
                call.version = self._stable
                key = (self._model, self._stable, "rollback")
                self._counts[key] = self._counts.get(key, 0) + 1
            return self.next(call)
        self._route(call)
        if call.version in self._canaries and self._gate.watches("error_ratio"):
            return self._watched(call)
        return self.next(call)

    async def _watched(self, call: InferenceCall) -> InferenceResult:
        try:
            result = await self.next(call)
        except InferenceError as exc:
            self._record(exc.code in _CANARY_FAILURES)
            raise
        self._record(False)
        return result

    def _record(self, bad: bool) -> None:
        if self._gate.record("error_ratio", bad):
            fired_by(self._plane, self._model, "error_ratio")


#: Statuses that count against a canary: the model failed, or could not serve.
_CANARY_FAILURES = frozenset({StatusCode.INTERNAL, StatusCode.UNAVAILABLE})


def fired_by(plane: DataPlane, model: str, rule: str) -> None:
    """Count a rollback of ``model`` fired by ``rule`` (for the metrics)."""
    key = (model, rule)
    plane.rollbacks[key] = plane.rollbacks.get(key, 0) + 1


def traffic_split(plane: DataPlane, model: str | None) -> Stage | None:
    """The stage for ``model``'s chain when its config declares a split, else None."""
    if model is None:
        return None
    registry = plane.registry
    try:
        served = registry.find(model)
    except InferenceError:
        return None
    text = served.spec.parameters.get(TRAFFIC_KEY) if served.spec is not None else None
    if not text:
        plane.traffic_weights.pop(model, None)
        return None
    split = parse_traffic(text)  # checked at load: a bad value never gets this far
    ready = {v for v in registry.versions(model) if _ready(plane, model, v)}
    serving = split.keeping(ready)
    if serving is None:
        log.warning(
            "model '%s': no version of %s '%s' is ready (ready: %s); requests that name "
            "no version go to the latest ready version",
            model,
            TRAFFIC_KEY,
            text,
            ", ".join(sorted(ready, key=int)) or "none",
        )
        plane.traffic_weights.pop(model, None)
        return None
    if serving != split:
        log.warning(
            "model '%s': %s '%s' names versions that are not ready; splitting %s",
            model,
            TRAFFIC_KEY,
            text,
            serving.describe(),
        )
    plane.traffic_weights[model] = dict(zip(serving.versions, serving.weights, strict=True))
    rules = served.spec.parameters.get(ROLLBACK_KEY) if served.spec is not None else None
    if not rules:
        plane.rollback_gates.pop(model, None)
        return TrafficSplitStage(plane, model, serving)
    # A fresh gate for every load of the model (a load ends a rollback); a chain rebuilt
    # for another reason (a hang noticed or over) keeps the gate of the version serving.
    old = plane.rollback_gates.get(model)
    gate = old if old is not None and old.built_for is served else None
    if gate is None:
        gate = RollbackGate(model, parse_rollback(rules), built_for=served)
        plane.rollback_gates[model] = gate
    return GatedTrafficSplitStage(plane, model, serving, gate)


def _ready(plane: DataPlane, model: str, version: str) -> bool:
    try:
        return plane.registry.find(model, version).ready
    except InferenceError:
        return False
