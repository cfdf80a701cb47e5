"""What the perf_analyzer benchmarks that measure in rounds share: their command-line
options for rounds and windows, the facts every result records about its run, and
writing the result as JSON and a plot (:mod:`batchwire.bench.shared_memory`,
:mod:`batchwire.bench.versions_cost`, :mod:`batchwire.bench.governance_cost`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

__all__ = ["RoundSettings", "add_round_options", "round_settings", "run_facts", "write_result"]


class RoundSettings(TypedDict):
    """The keyword arguments of a benchmark's ``run`` that :func:`round_settings` gives."""

    rounds: int
    interval_ms: int
    warmup_ms: int


def add_round_options(parser: argparse.ArgumentParser, out: str) -> None:
    """``--out`` (default ``out``), ``--rounds``, ``--interval-ms``, ``--perf-analyzer`` and
    ``--short`` (one round of 500 ms windows, for the tests)."""
    parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument("--rounds", type=int, default=None, help="default 4 (--short: 1)")
    parser.add_argument("--interval-ms", type=int, default=None, help="default 2000 (--short: 500)")
    parser.add_argument("--perf-analyzer", default=None)
    parser.add_argument(
        "--short", action="store_true", help="one round of 500 ms windows (for the tests)"
    )


def round_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> RoundSettings:
    """``rounds``, ``interval_ms`` and ``warmup_ms`` from :func:`add_round_options`' options;
    a usage error (exit 2) for fewer than 1 round or windows under 100 ms."""
    rounds = args.rounds if args.rounds is not None else (1 if args.short else 4)
    interval = args.interval_ms if args.interval_ms is not None else (500 if args.short else 2000)
    if rounds < 1:
        parser.error(f"--rounds must be >= 1, got {rounds}")
    if interval < 100:
        parser.error(f"--interval-ms must be >= 100, got {interval}")
    return {"rounds": rounds, "interval_ms": interval, "warmup_ms": 300 if args.short else 1000}


def run_facts(elapsed: float, perf_analyzer: str) -> dict[str, Any]:
    """What a result records about its run: duration, load generator, command, date, machine."""
    return {
        "seconds": round(elapsed, 1),
        "perf_analyzer": perf_analyzer,
        "command": sys.argv,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }


def write_result(
    result: dict[str, Any], out: Path, stem: str, plot: Callable[[dict[str, Any], Path], None]
) -> None:
    """``<out>/<stem>.json`` and ``<out>/<stem>.png`` (drawn by ``plot``)."""
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / f"{stem}.png")
