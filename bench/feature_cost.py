"""What a request-path feature costs: one build served twice, the feature off and on.

``python -m batchwire.bench.feature_cost
--feature token-auth|restricted|limits|response-cache|none [--rounds 6]
[--interval-ms 3000] [--scenarios c32_unary,c1_unary] [--model mlp]
[--out results/features] [--perf-analyzer PATH]``

Two ``batchwire serve`` processes of this checkout on free loopback ports, identical
but for the feature's options on the second, measured alternately by Triton's
``perf_analyzer`` exactly as :mod:`batchwire.bench.compare_builds` measures two builds
(warm-up, then ABBA pairs of three-window runs; throughput, p50/p99 and server CPU
per request). Both sides get the same perf_analyzer options, headers included, so
the requests are byte for byte the same and only the server's work differs:

- ``token-auth``: an ``--auth-config`` with one principal allowed ``inference`` and
  ``metadata``; every request carries ``authorization: Bearer <its token>``.
- ``restricted``: Triton's ``--grpc-restricted-protocol=inference,metadata:...`` with
  the header on every request.
- ``none``: nothing turned on: the ratio's noise floor on this machine.
- ``limits``: ``--max-inflight-requests`` and ``--max-inflight-requests-per-connection``
  set far above the load (the accounting is paid, nothing is refused).
- ``response-cache``: ``--cache-config local,size=64 MiB`` and ``response_cache {
  enable: true }`` in every exported model's config (the off side has no cache, so
  it runs every request; docs/response-cache.md). perf_analyzer sends the same data
  every time, so every request on the on side is a hit: the ratio is what a hit
  saves against running the model, not a cost.

Writes ``feature_cost_<feature>.json`` and ``.png`` into ``--out``; ``ratio`` = on / off
throughput (median over rounds; target >= 0.95 at c=32), reported, never asserted.
Run it alone on the machine (``flock /tmp/batchwire-bench.lock``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchwire.bench.compare_builds import (
    SCENARIOS,
    Build,
    BuildServer,
    alternate,
    perf_analyzer_binary,
    plot,
    scenarios_named,
    summarize,
)

#: on / off throughput at 32 in flight a feature must keep (issue 16: authorization).
TARGET_RATIO = 0.95
BENCH_TOKEN = "feature-cost-benchmark-token"


@dataclass(frozen=True, slots=True)
class Feature:
    """How to turn a feature on: ``serve`` options (given a scratch folder) and the
    perf_analyzer options both sides get."""

    name: str
    serve_args: Callable[[Path], list[str]]
    perf_args: tuple[str, ...] = ()


def _auth_config(scratch: Path) -> list[str]:
    path = scratch / "auth.toml"
    digest = hashlib.sha256(BENCH_TOKEN.encode()).hexdigest()
    path.write_text(
        f'[[principals]]\nname = "bench"\ntoken_sha256 = "{digest}"\n'
        'scopes = ["inference", "metadata"]\n'
    )
    return ["--auth-config", str(path)]


def _response_cache(scratch: Path) -> list[str]:
    # Both servers read this repository; only the one given --cache-config caches.
    for config in (scratch / "models").glob("*/config.pbtxt"):
        config.write_text(config.read_text() + "\nresponse_cache { enable: true }\n")
    return ["--cache-config", f"local,size={64 * 2**20}"]


FEATURES = {
    feature.name: feature
    for feature in (
        # Both servers alike: the noise floor, how far on/off ratios stray by chance.
        Feature("none", lambda _: []),
        Feature("token-auth", _auth_config, ("-H", f"authorization:Bearer {BENCH_TOKEN}")),
        Feature(
            "restricted",
            lambda _: ["--grpc-restricted-protocol", "inference,metadata:bench-key=bench-value"],
            ("-H", "bench-key:bench-value"),
        ),
        Feature(
            "limits",
            lambda _: [
                "--max-inflight-requests",
                "100000",
                "--max-inflight-requests-per-connection",
                "100000",
            ],
        ),
        Feature("response-cache", _response_cache),
    )
}


def run(
    feature: Feature,
    *,
    rounds: int = 6,
    interval_ms: int = 3000,
    model: str = "mlp",
    out: Path = Path("results/features"),
    perf_analyzer: str | None = None,
    scenarios: Sequence[str] = ("c32_unary", "c1_unary"),
) -> dict[str, Any]:
    """Measure the feature off and on alternately; write JSON and plot; return the result."""
    binary = perf_analyzer_binary(perf_analyzer)
    chosen = scenarios_named(",".join(scenarios))
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="batchwire-feature-"))
    try:
        from batchwire.examples.export import export_examples

        repository = scratch / "models"
        export_examples(repository, [model])
        workdir = scratch / "cwd"
        workdir.mkdir()
        build = Build("checkout", "checkout (working tree)", None)
        extra = feature.serve_args(scratch)
        servers = {
            "base": BuildServer(build, repository, workdir, out / f"{feature.name}_off.log"),
            "new": BuildServer(build, repository, workdir, out / f"{feature.name}_on.log", *extra),
        }
        perf_args = {label: feature.perf_args for label in servers}
        with servers["base"], servers["new"]:
            results, elapsed = alternate(
                binary, servers, model, chosen, rounds, interval_ms, scratch, perf_args
            )
        shown = " ".join(extra).replace(str(scratch), "<scratch>")
        result = {
            "feature": feature.name,
            "base": {"origin": f"{feature.name} off", "server_file": servers["base"].server_file},
            "new": {
                "origin": f"{feature.name} on ({shown})",
                "server_file": servers["new"].server_file,
            },
            "perf_analyzer_args": list(feature.perf_args),
            "model": model,
            "interval_ms": interval_ms,
            "scenarios": [s.name for s in chosen],
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
    stem = f"feature_cost_{feature.name}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / f"{stem}.png")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--feature", required=True, choices=sorted(FEATURES))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--interval-ms", type=int, default=3000)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--out", type=Path, default=Path("results/features"))
    parser.add_argument("--perf-analyzer", default=None)
    parser.add_argument(
        "--scenarios",
        default="c32_unary,c1_unary",
        help=f"comma-separated subset of {', '.join(s.name for s in SCENARIOS)}",
    )
    args = parser.parse_args()
    try:
        scenarios_named(args.scenarios)
    except ValueError as exc:
        parser.error(str(exc))
    result = run(
        FEATURES[args.feature],
        rounds=args.rounds,
        interval_ms=args.interval_ms,
        model=args.model,
        out=args.out,
        perf_analyzer=args.perf_analyzer,
        scenarios=args.scenarios.split(","),
    )
    for name, figures in result["summary"].items():
        print(
            f"{args.feature} {name:>10}: on/off throughput {figures['ratio']:.3f} "
            f"(quartiles {figures['ratio_quartiles'][0]:.3f}-{figures['ratio_quartiles'][2]:.3f}); "
            f"p50 off {figures['base_p50_ms']:.3f} ms, on {figures['new_p50_ms']:.3f} ms; "
            f"server CPU per request off {figures['base_server_cpu_us']} us, "
            f"on {figures['new_server_cpu_us']} us"
        )
    print(f"written to {args.out}/feature_cost_{args.feature}.json and .png")


if __name__ == "__main__":
    main()
