"""What a traffic split, shadow traffic and the response cache cost: one server, mlp seven ways.

``python -m batchwire.bench.versions_cost [--out results/versions-cost] [--rounds 4]
[--interval-ms 2000] [--concurrency 32] [--perf-analyzer PATH] [--short]``

One ``batchwire serve`` of this checkout, on a free 127.0.0.1 port, serves the ``mlp``
example seven times over, the same weights in every version:

- ``mlp``: as exported (the reference);
- ``mlp_route``: versions 1 and 2, ``batchwire.traffic`` ``1:100,2:0``: every request
  passes the split stage and all go to one batcher, so this is the routing's own cost;
- ``mlp_split``: versions 1 and 2, ``batchwire.traffic`` ``1:90,2:10``: the routing, and
  requests shared between two batchers, whose batches are smaller than one batcher's;
- ``mlp_shadow``: versions 1 and 2, ``batchwire.shadow`` ``2:100`` (every request also
  runs on version 2 and the answers are compared);
- ``mlp_cache_hits`` and ``mlp_cache_misses``: one version with ``response_cache {
  enable: true }`` on a server started with ``--cache-config local,size=65536``; the
  first is sent one input over and over (hits), the second cycles through 2048
  different inputs, more than the cache holds (misses: the cache's own cost), and is
  compared with ``mlp_distinct``, the same inputs to a model without the cache.

Triton's ``perf_analyzer`` loads each at ``--concurrency`` unary requests in flight
(one :func:`~batchwire.bench.compare_builds.measure`: three ``--interval-ms``
windows, stability check off: throughput, p50/p99, the server's CPU per request). After
an unrecorded warm-up of all seven, each round measures them back to back in an order
rotated from round to round, so drift on the shared machine spreads over all. Per round
``ratio`` = variant / reference throughput and ``p99_delta_ms`` = variant - reference
p99 (the reference is ``mlp``, or ``mlp_distinct`` for the cache misses);
the summary gives medians and quartiles over rounds. With shadow traffic the server does
twice the model work per answered request: on a machine without spare cores the
primary's throughput falls by up to half, which is the cost to expect, not a defect
(the issue's target is about the primary's p99 while the host has spare capacity).

Writes ``versions_cost.json`` and ``versions_cost.png`` into ``--out``. Run it alone on
the machine (``flock /tmp/batchwire-bench.lock``). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Sequence
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

__all__ = ["CACHED", "DISTINCT_INPUTS", "VARIANTS", "export_variants", "run"]

#: Model name -> the config parameters that make the variant (``mlp``: none).
VARIANTS: dict[str, dict[str, str]] = {
    "mlp": {},
    # The split stage on every request, all of them to one version: the routing's own cost.
    "mlp_route": {"batchwire.traffic": "1:100,2:0"},
    "mlp_split": {"batchwire.traffic": "1:90,2:10"},
    "mlp_shadow": {"batchwire.traffic": "1:100,2:0", "batchwire.shadow": "2:100"},
    # One version with ``response_cache { enable: true }`` (CACHED): perf_analyzer's
    # default data repeats one input, so all but the first request are cache hits ...
    "mlp_cache_hits": {},
    # ... and here it cycles through DISTINCT_INPUTS inputs, more than the server's
    # CACHE_BYTES hold: every request misses (the cache's pure overhead) ...
    "mlp_cache_misses": {},
    # ... measured against the same distinct inputs without a cache (perf_analyzer's
    # --input-data costs the client, on the same cores, more than its default data).
    "mlp_distinct": {},
}
#: The reference each variant's ratio is taken against (default ``mlp``).
REFERENCE = {"mlp_cache_misses": "mlp_distinct"}
#: Variants perf_analyzer feeds DISTINCT_INPUTS different inputs.
DISTINCT = ("mlp_cache_misses", "mlp_distinct")
#: The variants whose config enables the response cache.
CACHED = ("mlp_cache_hits", "mlp_cache_misses")
#: Distinct inputs perf_analyzer cycles through for ``mlp_cache_misses``.
DISTINCT_INPUTS = 2048
#: The server's ``--cache-config local,size=``: about a hundred of mlp's entries.
CACHE_BYTES = 65536


def export_variants(repository: Path) -> None:
    """Write the variants into ``repository`` (the example's weights in every version)."""
    from batchwire.examples.export import export_examples

    export_examples(repository, ["mlp"])
    source = repository / "mlp"
    config = (source / "config.pbtxt").read_text()
    for name in (*CACHED, "mlp_distinct"):
        folder = repository / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy(source / "1" / "model.pt", folder / "1" / "model.pt")
        text = config.replace('name: "mlp"', f'name: "{name}"')
        if name in CACHED:
            text += "response_cache { enable: true }\n"
        (folder / "config.pbtxt").write_text(text)
    for name, parameters in VARIANTS.items():
        if not parameters:
            continue
        folder = repository / name
        for version in ("1", "2"):
            (folder / version).mkdir(parents=True, exist_ok=True)
            shutil.copy(source / "1" / "model.pt", folder / version / "model.pt")
        text = config.replace('name: "mlp"', f'name: "{name}"') + "version_policy: { all: {} }\n"
        for key, value in parameters.items():
            text += f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
        (folder / "config.pbtxt").write_text(text)


def _write_distinct_inputs(path: Path) -> None:
    """perf_analyzer ``--input-data``: DISTINCT_INPUTS different inputs for mlp."""
    import numpy as np

    rows = np.random.default_rng(0).standard_normal((DISTINCT_INPUTS, 64)).astype(np.float32)
    data = [{"INPUT__0": [round(float(v), 6) for v in row]} for row in rows]
    path.write_text(json.dumps({"data": data}))


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per variant; ratio and p99 delta against each one's reference."""
    references = {
        name: REFERENCE.get(name, "mlp") for name in VARIANTS if name not in ("mlp", "mlp_distinct")
    }
    return summarize_rotation(rounds, list(VARIANTS), references)


def plot(result: dict[str, Any], path: Path) -> None:
    summary = result["summary"]
    title = (
        f"mlp, c={result['concurrency']}: route/plain {summary['mlp_route']['ratio']:.3f}, "
        f"split/plain {summary['mlp_split']['ratio']:.3f}, "
        f"shadow/plain {summary['mlp_shadow']['ratio']:.3f} (medians); "
        f"{result['machine']['cpus']} CPUs"
    )
    plot_rotation(result["rounds"], list(VARIANTS), title, path)


def run(
    *,
    rounds: int = 4,
    interval_ms: int = 2000,
    warmup_ms: int = 1000,
    concurrency: int = 32,
    out: Path = Path("results/versions-cost"),
    perf_analyzer: str | None = None,
) -> dict[str, Any]:
    """Serve the variants, measure them in rotation; write JSON and plot; return it."""
    binary = find_binary(perf_analyzer)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="batchwire-versions-bench-"))
    scenario = Scenario(f"c{concurrency}_unary", concurrency, False)
    names = list(VARIANTS)
    try:
        repository = scratch / "models"
        export_variants(repository)
        workdir = scratch / "cwd"
        workdir.mkdir()
        distinct = scratch / "distinct.json"
        _write_distinct_inputs(distinct)
        perf_args = {name: () for name in names} | {
            name: ("--input-data", str(distinct)) for name in DISTINCT
        }
        build = Build("checkout", "checkout (working tree)", None)
        server = BuildServer(
            build,
            repository,
            workdir,
            out / "versions_cost_server.log",
            "--cache-config",
            f"local,size={CACHE_BYTES}",
        )
        with server:
            results, elapsed = measure_in_rotation(
                binary,
                {name: Target(server, name, perf_args[name]) for name in names},
                scenario,
                rounds=rounds,
                interval_ms=interval_ms,
                warmup_ms=warmup_ms,
                scratch=scratch,
            )
        result = {
            "server": {"origin": build.origin, "server_file": server.server_file},
            "variants": VARIANTS,
            "concurrency": concurrency,
            "interval_ms": interval_ms,
            "windows_per_measurement": 3,
            "rounds": results,
            "summary": summarize(results),
            **run_facts(elapsed, binary),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_result(result, out, "versions_cost", plot)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_round_options(parser, "results/versions-cost")
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
            f", ratio {figures['ratio']:.3f} {figures['ratio_quartiles']}, "
            f"p99 {figures['p99_delta_ms']:+.2f} ms"
            if "ratio" in figures
            else ""
        )
        print(f"{name}: {figures['throughput']:.0f}/s p99 {figures['p99_ms']:.2f} ms{extra}")
    print(f"wrote {args.out / 'versions_cost.json'} and {args.out / 'versions_cost.png'}")


if __name__ == "__main__":
    main()
