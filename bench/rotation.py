"""Benchmarks that serve several variants and measure them back to back, in an order
rotated from round to round (:mod:`batchwire.bench.versions_cost`,
:mod:`batchwire.bench.governance_cost`): their summary and their plot.

A round is a dict: variant name -> one :func:`~batchwire.bench.compare_builds.measure`
(``throughput``, ``p50_ms``, ``p99_ms``, ``server_cpu_us``), plus ``order``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchwire.bench.compare_builds import BuildServer, Scenario, measure, quartiles

__all__ = ["Target", "measure_in_rotation", "plot_rotation", "summarize_rotation"]


@dataclass(frozen=True)
class Target:
    """What one variant is: the server and model perf_analyzer loads, and its options."""

    server: BuildServer
    model: str
    perf_args: tuple[str, ...] = ()


def measure_in_rotation(
    perf_analyzer: str,
    targets: Mapping[str, Target],
    scenario: Scenario,
    *,
    rounds: int,
    interval_ms: int,
    warmup_ms: int,
    scratch: Path,
) -> tuple[list[dict[str, Any]], float]:
    """An unrecorded warm-up of every target, then ``rounds`` rounds measuring each in an
    order rotated by one from round to round; returns the rounds and their seconds."""
    names = list(targets)

    def one(name: str, window_ms: int) -> dict[str, float | None]:
        target = targets[name]
        return measure(
            perf_analyzer, target.server, target.model, scenario, window_ms, scratch,
            target.perf_args,
        )  # fmt: skip

    for name in names:
        one(name, warmup_ms)
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    for index in range(rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        row: dict[str, Any] = {"order": order}
        for name in order:
            row[name] = one(name, interval_ms)
        results.append(row)
        print(
            f"round {index + 1}: "
            + " | ".join(
                f"{n} {row[n]['throughput']:.0f}/s p99 {row[n]['p99_ms']:.2f} ms" for n in names
            ),
            flush=True,
        )
    return results, time.monotonic() - started


_MARKERS = "o^sdvx*<>ph"


def summarize_rotation(
    rounds: list[dict[str, Any]], names: Sequence[str], references: Mapping[str, str]
) -> dict[str, Any]:
    """Per variant, the medians over rounds; for each variant ``references`` names, also
    ``ratio`` (its throughput / its reference's, per round: median and quartiles) and
    ``p99_delta_ms`` (its p99 - the reference's, likewise)."""
    summary: dict[str, Any] = {}
    for name in names:
        figures: dict[str, Any] = {}
        for key in ("throughput", "p50_ms", "p99_ms", "server_cpu_us"):
            values = [r[name][key] for r in rounds if r[name][key] is not None]
            figures[key] = round(statistics.median(values), 3) if values else None
        reference = references.get(name)
        if reference is not None:
            figures["reference"] = reference
            ratios = [r[name]["throughput"] / r[reference]["throughput"] for r in rounds]
            deltas = [r[name]["p99_ms"] - r[reference]["p99_ms"] for r in rounds]
            figures["ratio"] = round(statistics.median(ratios), 4)
            figures["ratio_quartiles"] = quartiles(ratios)
            figures["p99_delta_ms"] = round(statistics.median(deltas), 3)
            figures["p99_delta_ms_quartiles"] = quartiles(deltas)
        summary[name] = figures
    return summary


def plot_rotation(
    rounds: list[dict[str, Any]], names: Sequence[str], title: str, path: Path
) -> None:
    """Throughput and p99 of every variant, round by round, under ``title``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(1, len(rounds) + 1))
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for index, name in enumerate(names):
        marker = _MARKERS[index % len(_MARKERS)]
        top.plot(x, [r[name]["throughput"] for r in rounds], marker=marker, label=name)
        bottom.plot(x, [r[name]["p99_ms"] for r in rounds], marker=marker, label=name)
    top.set_ylabel("infer/s")
    bottom.set_ylabel("p99 latency (ms)")
    bottom.set_xlabel("round")
    for axis in (top, bottom):
        axis.set_ylim(bottom=0)
        axis.set_xticks(x)
        axis.legend(loc="best")
        axis.grid(True, alpha=0.3)
    top.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
