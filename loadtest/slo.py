"""Latency targets (service-level objectives): load, validate, evaluate.

The file is TOML (``loadtest/slo.toml`` ships as the default)::

    version = 1

    [defaults]              # optional, applies to every model below
    max_failure_ratio = 0.0

    [models.mlp]
    p50_ms = 5              # median latency of successful requests, ms
    p99_ms = 25             # also p90_ms, p95_ms, p999_ms, max_ms
    min_rps = 50            # completed requests per second over the window
    max_failure_ratio = 0.001

Every problem is reported at once, as ``<file>: models.mlp.p99_ms must be a
positive number, got -3``, before any load is sent.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from batchwire.loadtest.latency import LatencyRecorder, WindowStats

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

SLO_FORMAT_VERSION = 1

#: Percentile targets: key -> (fraction, label).
PERCENTILE_KEYS: dict[str, tuple[float, str]] = {
    "p50_ms": (0.50, "p50"),
    "p90_ms": (0.90, "p90"),
    "p95_ms": (0.95, "p95"),
    "p99_ms": (0.99, "p99"),
    "p999_ms": (0.999, "p99.9"),
    "max_ms": (1.0, "max"),
}
TARGET_KEYS = (*PERCENTILE_KEYS, "min_rps", "max_failure_ratio")


class SLOError(ValueError):
    """The SLO file cannot be used; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {problem}" for problem in problems))


@dataclass(frozen=True)
class ModelTargets:
    model: str
    #: percentile key (``p99_ms``) -> ms
    latency_ms: dict[str, float] = field(default_factory=dict)
    min_rps: float | None = None
    max_failure_ratio: float | None = None

    def empty(self) -> bool:
        return not self.latency_ms and self.min_rps is None and self.max_failure_ratio is None


@dataclass(frozen=True)
class SLOSpec:
    source: str
    version: int
    models: dict[str, ModelTargets]
    description: str = ""


def default_slo_path() -> Path:
    """The ``slo.toml`` shipped with the package."""
    return Path(str(resources.files("batchwire.loadtest") / "slo.toml"))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_targets(where: str, table: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{where}.{key}"
        if key not in TARGET_KEYS:
            problems.append(f"{path}: unknown key; expected some of {', '.join(TARGET_KEYS)}")
            continue
        if key == "max_failure_ratio":
            if not _number(value) or not 0 <= value <= 1:
                problems.append(f"{path} must be a number between 0 and 1, got {value!r}")
                continue
        elif key == "min_rps":
            if not _number(value) or value < 0:
                problems.append(f"{path} must be a number >= 0, got {value!r}")
                continue
        elif not _number(value) or value <= 0:
            problems.append(f"{path} must be a positive number, got {value!r}")
            continue
        clean[key] = float(value)
    return clean


def parse_slo(
    data: Mapping[str, Any], source: str, known_models: set[str] | None = None
) -> SLOSpec:
    """Validate parsed TOML; raises :class:`SLOError` listing every problem."""
    problems: list[str] = []
    version = data.get("version")
    if version is None:
        problems.append(f"missing 'version' (this batchwire reads version = {SLO_FORMAT_VERSION})")
    elif version != SLO_FORMAT_VERSION or isinstance(version, bool):
        problems.append(
            f"version must be {SLO_FORMAT_VERSION}, got {version!r} (written for another batchwire?)"
        )
    description = data.get("description", "")
    if not isinstance(description, str):
        problems.append(f"description must be a string, got {description!r}")
        description = ""
    for key in data:
        if key not in ("version", "description", "defaults", "models"):
            problems.append(f"{key}: unknown key; expected version, description, defaults, models")
    defaults: dict[str, Any] = {}
    raw_defaults = data.get("defaults", {})
    if not isinstance(raw_defaults, Mapping):
        problems.append(f"defaults must be a table, got {raw_defaults!r}")
    else:
        defaults = _check_targets("defaults", raw_defaults, problems)
    models: dict[str, ModelTargets] = {}
    raw_models = data.get("models")
    if raw_models is None:
        problems.append("missing [models.<name>] tables: nothing to check")
    elif not isinstance(raw_models, Mapping):
        problems.append(f"models must be a table of [models.<name>] tables, got {raw_models!r}")
    else:
        if not raw_models:
            problems.append("models is empty: nothing to check")
        for name, table in raw_models.items():
            where = f"models.{name}"
            if known_models is not None and name not in known_models:
                problems.append(
                    f"{where}: no workload for model '{name}' (known: {', '.join(sorted(known_models))})"
                )
                continue
            if not isinstance(table, Mapping):
                problems.append(f"{where} must be a table of targets, got {table!r}")
                continue
            merged = {**defaults, **_check_targets(where, table, problems)}
            targets = ModelTargets(
                model=name,
                latency_ms={k: v for k, v in merged.items() if k in PERCENTILE_KEYS},
                min_rps=merged.get("min_rps"),
                max_failure_ratio=merged.get("max_failure_ratio"),
            )
            if targets.empty():
                problems.append(f"{where} has no targets (set p50_ms, p99_ms, min_rps ...)")
            models[name] = targets
    if problems:
        raise SLOError(source, problems)
    return SLOSpec(
        source=source, version=SLO_FORMAT_VERSION, models=models, description=description
    )


def load_slo(path: str | Path | None = None, known_models: set[str] | None = None) -> SLOSpec:
    """Read and validate an SLO file (the packaged default when ``path`` is None)."""
    if path is None:
        path = default_slo_path()
        source = "loadtest/slo.toml"
    else:
        source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SLOError(source, [f"cannot read the file: {exc.strerror or exc}"]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SLOError(source, [f"not valid TOML: {exc}"]) from exc
    return parse_slo(data, source, known_models)


# Evaluation -------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One target compared with its measurement."""

    model: str
    metric: str  # p99, rps, failure ratio, requests
    target: float | None
    measured: float | None
    passed: bool
    unit: str  # "ms", "req/s", ""
    comparison: str  # "<=" or ">="

    def target_text(self) -> str:
        return f"{self.comparison} {_fmt(self.target, self.unit)}"

    def measured_text(self) -> str:
        return "no data" if self.measured is None else _fmt(self.measured, self.unit)

    def line(self) -> str:
        """``FAIL mlp p99 42.1 ms > target 20 ms`` / ``PASS mlp rps 812.3 req/s >= target 50 req/s``."""
        status = "PASS" if self.passed else "FAIL"
        if self.measured is None:
            return f"{status} {self.model} {self.metric}: no successful requests measured (target {self.target_text()})"
        if self.comparison == "<=":
            op = "<=" if self.passed else ">"
        else:
            op = ">=" if self.passed else "<"
        return f"{status} {self.model} {self.metric} {self.measured_text()} {op} target {_fmt(self.target, self.unit)}"


def _trim(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "ms":
        return f"{_trim(value, 3 if value < 10 else 1)} ms"
    if unit == "req/s":
        return f"{_trim(value, 1)} req/s"
    if unit == "%":
        return f"{value * 100:.3g}%"
    return f"{value:g}"


@dataclass
class ModelResult:
    model: str
    stats: WindowStats
    duration_s: float
    checks: list[Check]

    @property
    def rps(self) -> float:
        return self.stats.successes / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)


@dataclass
class Evaluation:
    window_start: float
    window_end: float
    results: list[ModelResult]
    #: Models in the SLO file that were not part of this run.
    skipped: list[str]

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)

    def lines(self) -> list[str]:
        out = []
        for result in self.results:
            if result.checks:
                out += [check.line() for check in result.checks]
                continue
            h = result.stats.latency
            out.append(
                f"NOTE {result.model}: no targets; measured p50 {_fmt(h.percentile_ms(0.5), 'ms')}, "
                f"p99 {_fmt(h.percentile_ms(0.99), 'ms')}, {_fmt(result.rps, 'req/s')}, "
                f"{result.stats.failed} failed"
            )
        out += [f"SKIP {model}: not part of this run" for model in self.skipped]
        return out

    def failures(self) -> list[Check]:
        return [c for r in self.results for c in r.checks if not c.passed]


def evaluate(
    spec: SLOSpec,
    recorder: LatencyRecorder,
    models: list[str],
    *,
    window_start: float,
    window_end: float,
) -> Evaluation:
    """Compare every target of the ``models`` in this run with the measurements
    of requests that completed in [window_start, window_end]."""
    duration = max(window_end - window_start, 1e-9)
    results: list[ModelResult] = []
    for model in models:
        stats = recorder.window([model], since=window_start)
        targets = spec.models.get(model)
        checks: list[Check] = []
        if targets is None:
            results.append(ModelResult(model, stats, duration, checks))
            continue
        if stats.requests == 0:
            checks.append(Check(model, "requests", 1, 0, False, "", ">="))
        for key, target in targets.latency_ms.items():
            fraction, label = PERCENTILE_KEYS[key]
            measured = stats.latency.percentile_ms(fraction)
            passed = measured is not None and measured <= target
            checks.append(Check(model, label, target, measured, passed, "ms", "<="))
        if targets.min_rps is not None:
            rps = stats.successes / duration
            checks.append(
                Check(model, "rps", targets.min_rps, rps, rps >= targets.min_rps, "req/s", ">=")
            )
        if targets.max_failure_ratio is not None:
            ratio = stats.failure_ratio
            checks.append(
                Check(
                    model,
                    "failure ratio",
                    targets.max_failure_ratio,
                    ratio,
                    stats.requests > 0 and ratio <= targets.max_failure_ratio,
                    "%",
                    "<=",
                )
            )
        results.append(ModelResult(model, stats, duration, checks))
    skipped = sorted(set(spec.models) - set(models))
    return Evaluation(window_start, window_end, results, skipped)
