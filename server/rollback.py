"""The automatic rollback gate of a traffic split (config parameter ``batchwire.rollback``).

A model with a split (``batchwire.traffic``, :mod:`batchwire.server.traffic_split`) may
declare rules that take its canary versions out of the split when they misbehave::

    parameters { key: "batchwire.rollback"
                 value: { string_value: "error_ratio>0.05 over 200; disagreement>0.2 over 500" } }

Rules:

- The *stable* version is the split's version with the largest weight (the lowest
  version number among equals); every other version of the split is a *canary*.
- ``error_ratio>X over N``: over the last N requests answered by canary versions, the
  share that failed with INTERNAL (the model raised, or returned outputs its config
  does not declare) or UNAVAILABLE (not ready, hung) is above X. Refusals of the
  request itself (INVALID_ARGUMENT, NOT_FOUND...) and the caller's cancellations and
  deadlines do not count. The rule is not judged before N canary answers are in.
- ``disagreement>X over N``: over the last N compared shadow outputs
  (``batchwire.shadow``, :mod:`batchwire.server.shadow`), the share outside the shadow
  tolerance is above X. It takes the shadow version out of the split if it is a canary
  there, and stops the shadow copies.
- Either rule firing rolls back: from the next request on, requests that name no
  version all go to the stable version (requests naming a version still get it), the
  shadow stops, a WARNING says which rule fired with the figures, and the metrics say
  so (``batchwire_rollback_active{model}`` 1, ``batchwire_rollbacks_total{model,rule}``).
  It stays so until the model is loaded again (an operator's RepositoryModelLoad, or
  poll mode seeing the config change): the reload builds a fresh gate.
- A value that does not parse (an unknown rule, a threshold outside 0..1, N < 1) is a
  load error naming the parameter.

Cost: without the parameter, nothing. With it, requests routed to a canary are awaited
by the split stage (one coroutine) to see their outcome, and a deque append per answer.

Concurrency: loop thread only.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

__all__ = ["ROLLBACK_KEY", "RollbackGate", "RollbackRule", "parse_rollback"]

ROLLBACK_KEY = "batchwire.rollback"
RULES = ("error_ratio", "disagreement")
_RULE = re.compile(r"^\s*(\w+)\s*>\s*([0-9.eE+-]+)\s+over\s+(\d+)\s*$")


@dataclass(frozen=True, slots=True)
class RollbackRule:
    """``name>threshold over window``."""

    name: str
    threshold: float
    window: int


def parse_rollback(text: str) -> tuple[RollbackRule, ...]:
    """The rules ``text`` declares (separated by ';'); ValueError saying what is wrong."""
    rules: list[RollbackRule] = []
    for part in text.split(";"):
        if not part.strip():
            continue
        match = _RULE.match(part)
        if match is None or match.group(1) not in RULES:
            raise ValueError(
                f"'{part.strip()[:60]}' is not a rule (expected e.g. 'error_ratio>0.05 over "
                f"200' or 'disagreement>0.2 over 500'; rules: {', '.join(RULES)})"
            )
        try:
            threshold = float(match.group(2))
        except ValueError:
            threshold = -1.0
        window = int(match.group(3))
        if not 0 <= threshold < 1 or window < 1:
            raise ValueError(
                f"'{part.strip()[:60]}': the threshold must be in 0..1 (exclusive of 1) and "
                "the window >= 1 request"
            )
        if any(rule.name == match.group(1) for rule in rules):
            raise ValueError(f"rule '{match.group(1)}' is given twice")
        rules.append(RollbackRule(match.group(1), threshold, window))
    if not rules:
        raise ValueError("no rule given (expected e.g. 'error_ratio>0.05 over 200')")
    return tuple(rules)


@dataclass(slots=True)
class RollbackGate:
    """One model's rollback state: the recent outcomes each rule looks at."""

    model: str
    rules: tuple[RollbackRule, ...]
    #: The model version object the gate was made for (a new load makes a new gate).
    built_for: object = None
    #: Set once a rule fired: the name of that rule.
    fired: str = ""
    _windows: dict[str, deque[bool]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for rule in self.rules:
            self._windows[rule.name] = deque(maxlen=rule.window)

    def watches(self, name: str) -> bool:
        return name in self._windows

    def record(self, name: str, bad: bool) -> bool:
        """One more outcome for rule ``name``; True when this outcome made the gate fire."""
        window = self._windows.get(name)
        if window is None or self.fired:
            return False
        window.append(bad)
        rule = next(r for r in self.rules if r.name == name)
        if len(window) < rule.window:
            return False
        share = sum(window) / len(window)
        if share <= rule.threshold:
            return False
        self.fired = name
        log.warning(
            "model '%s': rolled back to its stable version: %s %.3f over the last %d "
            "(%s > %g); stays so until the model is loaded again",
            self.model,
            name,
            share,
            len(window),
            name,
            rule.threshold,
        )
        return True
