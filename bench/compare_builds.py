"""Served throughput and latency of two builds of batchwire, measured alternately in one run.

``python -m batchwire.bench.compare_builds --base REF|DIR [--new REF|DIR|.] [--rounds 6]
[--interval-ms 3000] [--scenarios c1_unary,c32_unary,c32_stream] [--model mlp]
[--out results/compare] [--perf-analyzer PATH]``

Each build is either a git ref of this repository (``git archive`` of it, installed
with ``pip install --no-deps --target`` into a scratch folder), a folder holding an
installed ``batchwire`` package, or ``.`` (the default for ``--new``): this checkout,
as the running interpreter imports it. Both run under this interpreter, from a
scratch working directory (so that neither picks up the checkout's ``batchwire``
folder by accident); each server's ``batchwire.server.__file__`` is printed and
recorded, so the JSON says which code answered.

Both servers (``python -m batchwire serve``, on free loopback ports, no metrics
endpoint) serve one shared copy of the example models and stay up for the whole run.
Triton's ``perf_analyzer`` first warms every scenario up on both (unrecorded), then
loads them in turn: in each of ``--rounds`` rounds, for each scenario (one unary
request in flight, 32 unary, 32 on one stream), both builds are measured back to
back, the order swapped from one pair to the next (ABBA), so drift on a shared
machine hits both sides of every ratio. A measurement is three
``--interval-ms`` windows of one perf_analyzer run (its stability check disabled, so
the run never repeats or stops early); throughput and the p50/p99 latency are its
report; on Linux the server's CPU time per request over the run (all its threads,
from ``/proc``) comes with them. Per round and scenario, ``ratio`` = new / base
throughput and ``p50_delta_ms`` = new - base p50; the summary gives their medians and
quartiles over rounds. The same build on both sides (``--new`` = ``--base``) measures
the noise floor: how far rounds differ when nothing changed.

Writes ``compare_builds.json`` and ``compare_builds.png`` into ``--out`` and prints the
median ratios. Targets (new / base >= 0.97 at c=32, no p50 increase at c=1 beyond the
spread between rounds) are reported, never asserted. Run it alone on the machine
(``flock /tmp/batchwire-bench.lock python -m batchwire.bench.compare_builds ...``):
with 2 cores the load generator already competes with the server.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from batchwire.bench.server_process import ServerProcess, cpu_seconds
from batchwire.bench.tracing_overhead import find_perf_analyzer

#: new / base throughput at 32 in flight the refactors of the request path must keep.
TARGET_RATIO = 0.97
REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
#: Where scripts/install-perf-analyzer.sh puts perf_analyzer.
INSTALLED_PERF_ANALYZER = REPOSITORY_ROOT / ".venv-perf" / "perf_analyzer"


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    concurrency: int
    streaming: bool


SCENARIOS = (
    Scenario("c1_unary", 1, False),
    Scenario("c32_unary", 32, False),
    Scenario("c32_stream", 32, True),
)


def scenarios_named(text: str) -> tuple[Scenario, ...]:
    """The scenarios a comma-separated list names; ValueError naming an unknown one."""
    known = {s.name: s for s in SCENARIOS}
    names = text.split(",")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown scenarios {unknown}; choose among {', '.join(known)}")
    return tuple(known[name] for name in names)


def perf_analyzer_binary(given: str | None) -> str:
    """``given``, else the one scripts/install-perf-analyzer.sh installed, else the usual
    lookup (:func:`~batchwire.bench.tracing_overhead.find_perf_analyzer`)."""
    return find_perf_analyzer(
        given or (str(INSTALLED_PERF_ANALYZER) if INSTALLED_PERF_ANALYZER.exists() else None)
    )


@dataclass(frozen=True, slots=True)
class Build:
    """Code to serve: ``pythonpath`` None is this checkout, else a folder holding batchwire."""

    label: str
    origin: str
    pythonpath: Path | None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        if self.pythonpath is not None:
            env["PYTHONPATH"] = str(self.pythonpath)
        return env


def _resolve_build(label: str, spec: str, scratch: Path) -> Build:
    """``.`` (this checkout), a folder holding an installed batchwire, or a git ref."""
    if spec == ".":
        return Build(label, "checkout (working tree)", None)
    folder = Path(spec)
    if (folder / "batchwire" / "__init__.py").is_file():
        return Build(label, f"installed at {folder.resolve()}", folder.resolve())
    commit = subprocess.run(
        ["git", "-C", str(REPOSITORY_ROOT), "rev-parse", "--verify", f"{spec}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    source = scratch / f"{label}-src"
    source.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPOSITORY_ROOT), "archive", commit],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    target = scratch / f"{label}-install"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
    )
    return Build(label, f"git {spec} ({commit[:12]})", target)


class BuildServer(ServerProcess):
    """One build's ``batchwire serve`` on a free loopback port (a context manager)."""

    def __init__(
        self, build: Build, repository: Path, workdir: Path, log: Path, *extra_args: str
    ) -> None:
        """``extra_args``: further ``serve`` options (a feature to measure, see feature_cost)."""
        super().__init__(repository, *extra_args, log_path=log, cwd=workdir, env=build.env())
        self.build = build
        #: ``batchwire.server.__file__`` as this build's server imports it.
        self.server_file = subprocess.run(
            [sys.executable, "-c", "import batchwire.server as s; print(s.__file__)"],
            cwd=workdir,
            env=build.env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    @property
    def pid(self) -> int:
        """The server process's id (while it runs)."""
        pid = super().pid
        assert pid is not None, "the server is not running"
        return pid

    def __enter__(self) -> BuildServer:
        self.start(timeout=180)
        return self


def measure(
    perf_analyzer: str,
    server: BuildServer,
    model: str,
    scenario: Scenario,
    interval_ms: int,
    scratch: Path,
    extra_args: Sequence[str] = (),
) -> dict[str, float | None]:
    """One perf_analyzer run of three windows: infer/s, p50/p99 (ms), server CPU per request.

    ``extra_args``: further perf_analyzer options (``-H key:value`` headers, TLS files).
    """
    report = scratch / "perf_analyzer.csv"
    args = [
        perf_analyzer,
        "-m",
        model,
        "-u",
        server.address,
        "-i",
        "grpc",
        "--concurrency-range",
        f"{scenario.concurrency}:{scenario.concurrency}",
        "--measurement-mode",
        "time_windows",
        "--measurement-interval",
        str(interval_ms),
        # Three windows, never more: every window is "stable" within 999%.
        "--stability-percentage",
        "999",
        "--max-trials",
        "3",
        "-f",
        str(report),
    ]
    if scenario.streaming:
        args.append("--streaming")
    args += extra_args
    cpu_before = cpu_seconds(server.pid)
    started = time.monotonic()
    run = subprocess.run(args, capture_output=True, text=True, timeout=interval_ms * 0.01 + 120)
    elapsed = time.monotonic() - started
    cpu_after = cpu_seconds(server.pid)
    if run.returncode != 0:
        raise RuntimeError(
            f"perf_analyzer failed ({run.returncode}): {(run.stdout + run.stderr)[-2000:]}"
        )
    with report.open() as stream:
        row = next(csv.DictReader(stream))
    throughput = float(row["Inferences/Second"])
    cpu_us = None
    if cpu_before is not None and cpu_after is not None and throughput:
        # Over the whole perf_analyzer run, which loads the server at about the measured
        # rate from start to end (its start-up and metadata calls are noise).
        cpu_us = round((cpu_after - cpu_before) / (throughput * elapsed) * 1e6, 1)
    return {
        "throughput": round(throughput, 1),
        "p50_ms": round(float(row["p50 latency"]) / 1000, 3),
        "p99_ms": round(float(row["p99 latency"]) / 1000, 3),
        "server_cpu_us": cpu_us,
    }


def _brief(figures: dict) -> str:
    return (
        f"{figures['throughput']:7.1f}/s p50 {figures['p50_ms']:.3f} ms"
        f" cpu {figures['server_cpu_us']} us"
    )


def quartiles(values: list[float]) -> list[float]:
    """[q1, median, q3] of ``values`` (inclusive method), rounded to 4 places."""
    if len(values) == 1:
        return [round(values[0], 4)] * 3
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return [round(q1, 4), round(median, 4), round(q3, 4)]


def summarize(rounds: list[dict]) -> dict[str, dict]:
    """Per scenario: the medians (and quartiles) over rounds of the new/base figures."""
    summary = {}
    for name in rounds[0]:
        pairs = [r[name] for r in rounds]
        ratios = [p["new"]["throughput"] / p["base"]["throughput"] for p in pairs]
        deltas = [p["new"]["p50_ms"] - p["base"]["p50_ms"] for p in pairs]
        figures: dict[str, object] = {
            "ratio": round(statistics.median(ratios), 4),
            "ratio_quartiles": quartiles(ratios),
            "p50_delta_ms": round(statistics.median(deltas), 4),
            "p50_delta_ms_quartiles": quartiles(deltas),
        }
        for key in ("throughput", "p50_ms", "p99_ms", "server_cpu_us"):
            for label in ("base", "new"):
                values = [p[label][key] for p in pairs if p[label][key] is not None]
                figures[f"{label}_{key}"] = round(statistics.median(values), 3) if values else None
        cpu = [
            p["new"]["server_cpu_us"] - p["base"]["server_cpu_us"]
            for p in pairs
            if p["new"]["server_cpu_us"] is not None and p["base"]["server_cpu_us"] is not None
        ]
        figures["server_cpu_delta_us"] = round(statistics.median(cpu), 1) if cpu else None
        summary[name] = figures
    return summary


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = result["rounds"]
    x = list(range(1, len(rounds) + 1))
    panels = [(name, "throughput") for name in result["scenarios"]]
    panels += [(name, "p50_ms") for name in result["scenarios"] if name.startswith("c1_")]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for axis, (name, key) in zip(axes.flat, panels, strict=True):
        for label, marker in (("base", "o"), ("new", "s")):
            axis.plot(x, [r[name][label][key] for r in rounds], marker=marker, label=label)
        figures = result["summary"][name]
        if key == "throughput":
            axis.set_title(f"{name}: new/base {figures['ratio']:.3f} (median of rounds)")
            axis.set_ylabel("infer/s")
        else:
            axis.set_title(f"{name}: p50, new - base {figures['p50_delta_ms']:+.3f} ms (median)")
            axis.set_ylabel("p50 latency (ms)")
        axis.set_xlabel("round")
        axis.set_xticks(x)
        axis.set_ylim(bottom=0)
        axis.legend(loc="lower right")
    figure.suptitle(
        f"base: {result['base']['origin']}  |  new: {result['new']['origin']}", fontsize=9
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def alternate(
    binary: str,
    servers: dict[str, BuildServer],
    model: str,
    scenarios: Sequence[Scenario],
    rounds: int,
    interval_ms: int,
    scratch: Path,
    perf_args: Mapping[str, Sequence[str]] | None = None,
) -> tuple[list[dict], float]:
    """Measure the ``base`` and ``new`` servers in alternation; (rounds, seconds taken).

    Every scenario is first warmed up on both, unrecorded: without it the first pair of
    the first round favours whichever server is measured first (seen with the same build
    on both sides). Then, per round and scenario, both back to back, the order swapped
    from one pair to the next (ABBA). ``perf_args``: extra perf_analyzer options per
    label.
    """
    extra = perf_args or {}
    for scenario in scenarios:
        for label, server in servers.items():
            measure(binary, server, model, scenario, 1000, scratch, extra.get(label, ()))
    results: list[dict] = []
    started = time.monotonic()
    for index in range(rounds):
        row: dict[str, dict] = {}
        for position, scenario in enumerate(scenarios):
            order = ["base", "new"] if (index + position) % 2 == 0 else ["new", "base"]
            row[scenario.name] = {
                label: measure(
                    binary,
                    servers[label],
                    model,
                    scenario,
                    interval_ms,
                    scratch,
                    extra.get(label, ()),
                )
                for label in order
            }
            pair = row[scenario.name]
            ratio = pair["new"]["throughput"] / pair["base"]["throughput"]
            print(
                f"round {index + 1} {scenario.name:>10}: "
                + " | ".join(f"{label} {_brief(pair[label])}" for label in ("base", "new"))
                + f" | ratio {ratio:.3f}",
                flush=True,
            )
        results.append(row)
    return results, time.monotonic() - started


def run(
    base: str,
    new: str = ".",
    *,
    rounds: int = 6,
    interval_ms: int = 3000,
    model: str = "mlp",
    out: Path = Path("results/compare"),
    perf_analyzer: str | None = None,
    scenarios: tuple[Scenario, ...] = SCENARIOS,
) -> dict:
    """Measure both builds alternately; write the JSON and the plot; return the result."""
    binary = perf_analyzer_binary(perf_analyzer)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="batchwire-compare-"))
    try:
        builds = {
            "base": _resolve_build("base", base, scratch),
            "new": _resolve_build("new", new, scratch),
        }
        from batchwire.examples.export import export_examples

        repository = scratch / "models"
        export_examples(repository, [model])
        workdir = scratch / "cwd"
        workdir.mkdir()
        servers = {
            label: BuildServer(build, repository, workdir, out / f"compare_builds_{label}.log")
            for label, build in builds.items()
        }
        for label, server in servers.items():
            print(f"{label}: {builds[label].origin}; batchwire.server is {server.server_file}")
        with servers["base"], servers["new"]:
            results, elapsed = alternate(
                binary, servers, model, scenarios, rounds, interval_ms, scratch
            )
        result = {
            "base": {"origin": builds["base"].origin, "server_file": servers["base"].server_file},
            "new": {"origin": builds["new"].origin, "server_file": servers["new"].server_file},
            "model": model,
            "interval_ms": interval_ms,
            "scenarios": [s.name for s in scenarios],
            "rounds": results,
            "summary": summarize(results),
            "target_ratio_c32": TARGET_RATIO,
            "seconds": round(elapsed, 1),
            "perf_analyzer": binary,
            "command": sys.argv,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    (out / "compare_builds.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "compare_builds.png")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git ref, install folder, or .")
    parser.add_argument("--new", default=".", help="git ref, install folder, or . (default)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--interval-ms", type=int, default=3000)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--out", type=Path, default=Path("results/compare"))
    parser.add_argument("--perf-analyzer", default=None)
    parser.add_argument(
        "--scenarios",
        default=",".join(s.name for s in SCENARIOS),
        help=f"comma-separated subset of {', '.join(s.name for s in SCENARIOS)}",
    )
    args = parser.parse_args()
    try:
        chosen = scenarios_named(args.scenarios)
    except ValueError as exc:
        parser.error(str(exc))
    result = run(
        args.base,
        args.new,
        rounds=args.rounds,
        interval_ms=args.interval_ms,
        model=args.model,
        out=args.out,
        perf_analyzer=args.perf_analyzer,
        scenarios=chosen,
    )
    for name, figures in result["summary"].items():
        print(
            f"{name:>10}: new/base throughput {figures['ratio']:.3f} "
            f"(quartiles {figures['ratio_quartiles'][0]:.3f}-{figures['ratio_quartiles'][2]:.3f}); "
            f"p50 base {figures['base_p50_ms']:.3f} ms, new {figures['new_p50_ms']:.3f} ms "
            f"(median delta {figures['p50_delta_ms']:+.3f} ms); server CPU per request "
            f"base {figures['base_server_cpu_us']} us, new {figures['new_server_cpu_us']} us "
            f"(median delta {figures['server_cpu_delta_us']} us)"
        )
    print(f"written to {args.out}/compare_builds.json and compare_builds.png")


if __name__ == "__main__":
    main()
