"""What the audit log and drift statistics cost: mlp served five ways, measured in rotation.

``python -m batchwire.bench.governance_cost [--out results/governance-cost] [--rounds 4]
[--interval-ms 2000] [--concurrency 32] [--perf-analyzer PATH] [--short]``

Five ``batchwire serve`` processes of this checkout, on free 127.0.0.1 ports, serve the
``mlp`` example (which ships a drift profile), identical but for:

- ``plain``: ``--drift-statistics=false`` and no audit log (the reference);
- ``audit``: ``--audit-log DIR`` (records with the tensors' SHA-256), drift off;
- ``audit_payloads``: ``--audit-log DIR --audit-payloads`` (the tensors' bytes too), drift off;
- ``drift``: drift statistics on (the default), no audit log;
- ``audit_drift``: both the audit log (hashes) and drift statistics: the issue's target,
  at least 0.9 of ``plain``'s throughput.

Triton's ``perf_analyzer`` loads each at ``--concurrency`` unary requests in flight (one
:func:`~batchwire.bench.compare_builds.measure`: three ``--interval-ms`` windows:
throughput, p50/p99, the server's CPU per request). After an unrecorded warm-up of all
five, each round measures them back to back in an order rotated from round to round,
so drift on the shared machine spreads over all; only the server being measured has
work. Per round ``ratio`` = variant / ``plain`` throughput; the summary gives medians
and quartiles over rounds; the audit logs' sizes (files, lines, bytes) and whether
each verifies (``batchwire audit verify``) once its server has stopped.

Writes ``governance_cost.json`` and ``governance_cost.png`` into ``--out``. Run it alone
on the machine (``flock /tmp/batchwire-bench.lock``). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from batchwire.bench.compare_builds import Build, BuildServer, Scenario
from batchwire.bench.compare_builds import perf_analyzer_binary as find_binary
from batchwire.bench.report import add_round_options, round_settings, run_facts, write_result
from batchwire.bench.rotation import (
    Target,
    measure_in_rotation,
    plot_rotation,
    summarize_rotation,
)

__all__ = ["TARGET_RATIO", "VARIANTS", "run"]

#: audit_drift / plain throughput the issue asks for.
TARGET_RATIO = 0.9
#: Variant -> (audit log?, payloads?, drift statistics?).
VARIANTS: dict[str, tuple[bool, bool, bool]] = {
    "plain": (False, False, False),
    "audit": (True, False, False),
    "audit_payloads": (True, True, False),
    "drift": (False, False, True),
    "audit_drift": (True, False, True),
}


def serve_args(name: str, scratch: Path) -> list[str]:
    """The ``batchwire serve`` options of variant ``name`` (audit logs under ``scratch``)."""
    audit, payloads, drift = VARIANTS[name]
    args = [f"--drift-statistics={'true' if drift else 'false'}"]
    if audit:
        args += ["--audit-log", str(scratch / f"audit-{name}")]
    if payloads:
        args.append("--audit-payloads")
    return args


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per variant; ratio and p99 delta against ``plain``."""
    return summarize_rotation(
        rounds, list(VARIANTS), {n: "plain" for n in VARIANTS if n != "plain"}
    )


def _log_size(folder: Path) -> dict[str, Any]:
    """An audit log's files, lines and bytes, and whether it verifies (after its server
    stopped, which closed it with a checkpoint)."""
    from batchwire.telemetry.audit_verify import verify_log

    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    lines = 0
    for path in files:
        with open(path, "rb") as stream:
            lines += sum(1 for _ in stream)
    report = verify_log(folder)
    return {
        "files": len(files),
        "lines": lines,
        "bytes": sum(p.stat().st_size for p in files),
        "verified": report.ok,
        "problems": [str(problem) for problem in report.problems[:5]],
    }


def plot(result: dict[str, Any], path: Path) -> None:
    summary = result["summary"]
    title = (
        f"mlp, c={result['concurrency']}, of plain: audit {summary['audit']['ratio']:.3f}, "
        f"payloads {summary['audit_payloads']['ratio']:.3f}, drift {summary['drift']['ratio']:.3f}, "
        f"both {summary['audit_drift']['ratio']:.3f} (medians); {result['machine']['cpus']} CPUs"
    )
    plot_rotation(result["rounds"], list(VARIANTS), title, path)


def run(
    *,
    rounds: int = 4,
    interval_ms: int = 2000,
    warmup_ms: int = 1000,
    concurrency: int = 32,
    out: Path = Path("results/governance-cost"),
    perf_analyzer: str | None = None,
) -> dict[str, Any]:
    """Serve the variants, measure them in rotation; write JSON and plot; return it."""
    binary = find_binary(perf_analyzer)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="batchwire-governance-bench-"))
    scenario = Scenario(f"c{concurrency}_unary", concurrency, False)
    names = list(VARIANTS)
    try:
        from batchwire.examples.export import export_examples

        repository = scratch / "models"
        export_examples(repository, ["mlp"])
        workdir = scratch / "cwd"
        workdir.mkdir()
        build = Build("checkout", "checkout (working tree)", None)
        with ExitStack() as stack:
            servers = {
                name: stack.enter_context(
                    BuildServer(
                        build,
                        repository,
                        workdir,
                        out / f"governance_cost_{name}.log",
                        *serve_args(name, scratch),
                    )
                )
                for name in names
            }
            results, elapsed = measure_in_rotation(
                binary,
                {name: Target(servers[name], "mlp") for name in names},
                scenario,
                rounds=rounds,
                interval_ms=interval_ms,
                warmup_ms=warmup_ms,
                scratch=scratch,
            )
        logs = {name: _log_size(scratch / f"audit-{name}") for name in names if VARIANTS[name][0]}
        result = {
            "server": {"origin": build.origin},
            "variants": {name: serve_args(name, Path("<scratch>")) for name in names},
            "concurrency": concurrency,
            "interval_ms": interval_ms,
            "windows_per_measurement": 3,
            "rounds": results,
            "summary": summarize(results),
            "target_ratio_audit_drift": TARGET_RATIO,
            "audit_logs": logs,
            **run_facts(elapsed, binary),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_result(result, out, "governance_cost", plot)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_round_options(parser, "results/governance-cost")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    result = run(
        **round_settings(parser, args),
        concurrency=args.concurrency,
        out=args.out,
        perf_analyzer=args.perf_analyzer,
    )
    for name, figures in result["summary"].items():
        extra = (
            f", {figures['ratio']:.3f} of plain {figures['ratio_quartiles']}"
            if "ratio" in figures
            else ""
        )
        print(f"{name}: {figures['throughput']:.0f}/s p99 {figures['p99_ms']:.2f} ms{extra}")
    print(f"wrote {args.out / 'governance_cost.json'} and {args.out / 'governance_cost.png'}")


if __name__ == "__main__":
    main()
