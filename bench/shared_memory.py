"""What system shared memory buys: one server, tensors in the message against tensors in regions.

``python -m batchwire.bench.shared_memory [--out results/shared-memory] [--rounds 4]
[--interval-ms 2000] [--perf-analyzer PATH] [--short]``

One ``batchwire serve --allow-client-shm`` of this checkout, on a free 127.0.0.1 port,
serves a scratch repository with two models:

- ``cnn`` (the example): FP32 [3, 64, 64] in, 48 KiB per request;
- ``reduce_1mib`` (built here, :func:`export_reduce_model`): FP32 [262144] in, 1 MiB
  per request, FP32 [2] out (the input's sum and mean), so that moving the input is
  nearly all of a request's work; pinned to one intra-op thread (see its config).

Triton's ``perf_analyzer`` loads each model at each concurrency (1 and 4 unary
requests in flight) twice: ``plain`` (tensors in ``raw_input_contents``, the default)
and ``shm`` (``--shared-memory system --output-shared-memory-size 4096``: perf_analyzer
writes its input data into system shared-memory regions once, registers them, and
every request names them; outputs are written into a region too). Everything else is
the same: the server, the model, the concurrency and the measurement (one
:func:`~batchwire.bench.compare_builds.measure`: three ``--interval-ms`` windows,
stability check off; throughput, p50/p99 and the server's CPU per request).

Every scenario is first warmed up on both sides, unrecorded. Then in each round, for
each scenario, both sides are measured back to back, the order swapped from one pair
to the next (ABBA), so a slow spell of the shared machine hits both sides of a ratio.
Per round and scenario ``ratio`` = shm / plain throughput and ``p50_delta_ms`` = shm -
plain p50; the summary has their medians and quartiles over rounds, and the medians of
each side's figures. Only figures of one run are compared; nothing is asserted.

``--short`` (for the tests): one round, 500 ms windows, a 300 ms warm-up.

Writes ``shared_memory.json`` and ``shared_memory.png`` (and the server's log) into
``--out``. Run it alone on the machine (``flock /tmp/batchwire-bench.lock``): with 2
cores, perf_analyzer competes with the server, and shared memory also saves
perf_analyzer the work of sending each tensor.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchwire.bench.compare_builds import (
    Build,
    BuildServer,
    Scenario,
    measure,
    perf_analyzer_binary,
    quartiles,
)
from batchwire.bench.report import add_round_options, round_settings, run_facts, write_result

__all__ = [
    "REDUCE_MODEL",
    "SCENARIOS",
    "SIDES",
    "ModelScenario",
    "export_reduce_model",
    "run",
]

#: The model this module builds: 1 MiB of FP32 in, its sum and mean out.
REDUCE_MODEL = "reduce_1mib"
REDUCE_ELEMENTS = 262_144  # 1 MiB of FP32
#: Bytes of each output region perf_analyzer makes (both models' outputs fit).
OUTPUT_REGION_BYTES = 4096

#: perf_analyzer options of each side; everything else is the same for both.
SIDES: dict[str, tuple[str, ...]] = {
    "plain": ("--shared-memory", "none"),
    "shm": (
        "--shared-memory",
        "system",
        "--output-shared-memory-size",
        str(OUTPUT_REGION_BYTES),
    ),
}

REDUCE_CONFIG = f"""\
name: "{REDUCE_MODEL}"
platform: "pytorch_libtorch"
max_batch_size: 8
input [ {{ name: "INPUT__0", data_type: TYPE_FP32, dims: [ {REDUCE_ELEMENTS} ] }} ]
output [ {{ name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 2 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 2000 }}
# One intra-op thread: a sum over 1 MiB takes about 0.1 ms, and left adaptive the plain
# side's batches (slowed by the loop's work on 1 MiB messages) went wide, and the idle
# OpenMP thread's spinning took the core that moving the next tensor needed.
parameters {{ key: "batchwire.intra_op_threads", value: {{ string_value: "1" }} }}
"""


@dataclass(frozen=True, slots=True)
class ModelScenario:
    """One measured case: a model, its input size per request, a load."""

    model: str
    input_bytes: int
    scenario: Scenario

    @property
    def name(self) -> str:
        return f"{self.model}_c{self.scenario.concurrency}"


SCENARIOS: tuple[ModelScenario, ...] = tuple(
    ModelScenario(model, size, Scenario(f"c{c}_unary", c, False))
    for model, size in (("cnn", 3 * 64 * 64 * 4), (REDUCE_MODEL, REDUCE_ELEMENTS * 4))
    for c in (1, 4)
)


def export_reduce_model(repository: Path) -> Path:
    """Write ``<repository>/reduce_1mib`` (TorchScript ``1/model.pt`` and its config)."""
    import torch
    from torch import nn

    class Reduce(nn.Module):
        """Per item: the sum and the mean of its elements."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            total = x.sum(dim=1, keepdim=True)
            return torch.cat([total, total / x.shape[1]], dim=1)

    folder = repository / REDUCE_MODEL
    (folder / "1").mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # TorchScript is deprecated upstream but it is the format Triton serves.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        torch.jit.script(Reduce()).save(str(folder / "1" / "model.pt"))
    (folder / "config.pbtxt").write_text(REDUCE_CONFIG, encoding="utf-8")
    return folder


def summarize(rounds: list[dict[str, Any]], scenarios: Sequence[ModelScenario]) -> dict[str, Any]:
    """Per scenario: medians (and quartiles) over rounds of shm / plain and of each side."""
    summary: dict[str, dict[str, Any]] = {}
    for case in scenarios:
        pairs = [r[case.name] for r in rounds]
        ratios = [p["shm"]["throughput"] / p["plain"]["throughput"] for p in pairs]
        deltas = [p["shm"]["p50_ms"] - p["plain"]["p50_ms"] for p in pairs]
        figures: dict[str, Any] = {
            "model": case.model,
            "input_bytes": case.input_bytes,
            "concurrency": case.scenario.concurrency,
            "ratio": round(statistics.median(ratios), 4),
            "ratio_quartiles": quartiles(ratios),
            "p50_delta_ms": round(statistics.median(deltas), 4),
            "p50_delta_ms_quartiles": quartiles(deltas),
        }
        for side in SIDES:
            for key in ("throughput", "p50_ms", "p99_ms", "server_cpu_us"):
                values = [p[side][key] for p in pairs if p[side][key] is not None]
                figures[f"{side}_{key}"] = round(statistics.median(values), 3) if values else None
                if key == "throughput":
                    figures[f"{side}_throughput_quartiles"] = quartiles(values)
        summary[case.name] = figures
    return summary


def plot(result: dict[str, Any], path: Path) -> None:
    """Per scenario: throughput of both sides per round, and p50 of both sides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = result["rounds"]
    names = list(result["summary"])
    x = list(range(1, len(rounds) + 1))
    figure, axes = plt.subplots(2, len(names), figsize=(4.5 * len(names), 8), squeeze=False)
    for column, name in enumerate(names):
        figures = result["summary"][name]
        for row, key, unit in ((0, "throughput", "infer/s"), (1, "p50_ms", "p50 latency (ms)")):
            axis = axes[row][column]
            for side, marker in (("plain", "o"), ("shm", "s")):
                axis.plot(x, [r[name][side][key] for r in rounds], marker=marker, label=side)
            if key == "throughput":
                axis.set_title(f"{name}: shm/plain {figures['ratio']:.3f} (median)", fontsize=10)
            else:
                axis.set_title(
                    f"{name}: p50 shm - plain {figures['p50_delta_ms']:+.3f} ms", fontsize=10
                )
            axis.set_ylabel(unit)
            axis.set_xlabel("round")
            axis.set_xticks(x)
            axis.set_ylim(bottom=0)
            axis.legend(loc="best")
    figure.suptitle(
        "perf_analyzer, same server: tensors in the message (plain) vs system shared memory "
        f"(shm); {result['machine']['cpus']} CPUs",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _brief(figures: dict[str, Any]) -> str:
    return (
        f"{figures['throughput']:7.1f}/s p50 {figures['p50_ms']:.3f} ms "
        f"cpu {figures['server_cpu_us']} us"
    )


def alternate(
    binary: str,
    server: BuildServer,
    scenarios: Sequence[ModelScenario],
    rounds: int,
    interval_ms: int,
    warmup_ms: int,
    scratch: Path,
) -> tuple[list[dict[str, Any]], float]:
    """Warm every scenario up on both sides, then measure them in ABBA pairs; (rounds, s)."""
    for case in scenarios:
        for args in SIDES.values():
            measure(binary, server, case.model, case.scenario, warmup_ms, scratch, args)
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    for index in range(rounds):
        row: dict[str, Any] = {}
        for position, case in enumerate(scenarios):
            order = ["plain", "shm"] if (index + position) % 2 == 0 else ["shm", "plain"]
            pair: dict[str, Any] = {
                side: measure(
                    binary, server, case.model, case.scenario, interval_ms, scratch, SIDES[side]
                )
                for side in order
            }
            row[case.name] = {side: pair[side] for side in SIDES} | {"order": order}
            print(
                f"round {index + 1} {case.name:>16}: "
                + " | ".join(f"{side} {_brief(pair[side])}" for side in SIDES)
                + f" | shm/plain {pair['shm']['throughput'] / pair['plain']['throughput']:.3f}",
                flush=True,
            )
        results.append(row)
    return results, time.monotonic() - started


def run(
    *,
    rounds: int = 4,
    interval_ms: int = 2000,
    warmup_ms: int = 1000,
    out: Path = Path("results/shared-memory"),
    perf_analyzer: str | None = None,
    scenarios: Sequence[ModelScenario] = SCENARIOS,
) -> dict[str, Any]:
    """Serve both models, measure both sides alternately; write JSON and plot; return it."""
    binary = perf_analyzer_binary(perf_analyzer)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="batchwire-shm-bench-"))
    try:
        from batchwire.examples.export import export_examples

        repository = scratch / "models"
        models = {case.model for case in scenarios}
        export_examples(repository, sorted(models - {REDUCE_MODEL}))
        if REDUCE_MODEL in models:
            export_reduce_model(repository)
        workdir = scratch / "cwd"
        workdir.mkdir()
        build = Build("checkout", "checkout (working tree)", None)
        server = BuildServer(
            build, repository, workdir, out / "shared_memory_server.log", "--allow-client-shm"
        )
        with server:
            results, elapsed = alternate(
                binary, server, scenarios, rounds, interval_ms, warmup_ms, scratch
            )
        result = {
            "server": {"origin": build.origin, "server_file": server.server_file},
            "serve_args": ["--allow-client-shm"],
            "sides": {side: list(args) for side, args in SIDES.items()},
            "interval_ms": interval_ms,
            "windows_per_measurement": 3,
            "scenarios": {
                case.name: {
                    "model": case.model,
                    "input_bytes": case.input_bytes,
                    "concurrency": case.scenario.concurrency,
                    "streaming": case.scenario.streaming,
                }
                for case in scenarios
            },
            "rounds": results,
            "summary": summarize(results, scenarios),
            **run_facts(elapsed, binary),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_result(result, out, "shared_memory", plot)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_round_options(parser, "results/shared-memory")
    args = parser.parse_args(argv)
    try:
        result = run(
            **round_settings(parser, args),
            out=args.out,
            perf_analyzer=args.perf_analyzer,
        )
    except ValueError as exc:  # no perf_analyzer that runs
        parser.exit(2, f"{parser.prog}: {exc}\n")
    for name, figures in result["summary"].items():
        print(
            f"{name:>16} ({figures['input_bytes']} B in): shm/plain throughput "
            f"{figures['ratio']:.3f} (quartiles {figures['ratio_quartiles'][0]:.3f}-"
            f"{figures['ratio_quartiles'][2]:.3f}); plain {figures['plain_throughput']:.1f}/s "
            f"p50 {figures['plain_p50_ms']:.3f} ms, shm {figures['shm_throughput']:.1f}/s "
            f"p50 {figures['shm_p50_ms']:.3f} ms; server CPU per request plain "
            f"{figures['plain_server_cpu_us']} us, shm {figures['shm_server_cpu_us']} us"
        )
    print(f"written to {args.out}/shared_memory.json and shared_memory.png")


if __name__ == "__main__":
    main()
