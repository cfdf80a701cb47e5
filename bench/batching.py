"""Batching benchmark: served throughput and latency against same-run references.

``python -m batchwire.bench.batching [--out results/bench] [--seconds 3] [--quick]``

It starts ``batchwire serve`` on the example models in a subprocess, drives it
with a closed-loop gRPC load generator in this process, and measures, in the
same run, in rounds (every compared pair back to back in each round; each ratio
is the median of its per-round values, so drift on a shared machine hits both
sides of it):

1. ``cnn`` served throughput at saturation vs the raw TorchScript model in a
   plain torch loop at the served mean batch size (target >= 0.90);
2. ``mlp`` served vs the ``null`` model (same inputs, no compute) served by the
   same server under the same load (target >= 0.85);
3. latency with one request in flight: served ``mlp`` p50 minus the raw model's
   batch-1 latency (target <= 0.5 ms); and, for context, the same minus the p50
   of a bare gRPC round trip (what batchwire adds to the transport);
4. a concurrency sweep per model: throughput, p50/p99 and mean batch size;
5. for context, the bare Python gRPC ceiling (:mod:`batchwire.bench.bare_server`,
   no model work) under the same load, and the served ``null`` model against it;
   and served ``mlp`` over one ModelStreamInfer stream (32 in flight) against the
   bare server's stream.

It writes ``batching.json`` and ``batching.png`` into ``--out`` and prints the
three ratios. Targets are reported, never asserted: the figures depend on the
machine, and on 2 cores the load generator competes with the server.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from batchwire.bench.loadgen import build_request, run_load
from batchwire.bench.raw import load_torchscript, raw_latency_ms, raw_throughput
from batchwire.bench.server_process import BareServerProcess
from batchwire.serve_process import ServerProcess

TARGETS = {"cnn_served_over_raw": 0.90, "mlp_over_null": 0.85, "low_load_overhead_ms": 0.5}


@dataclass(frozen=True, slots=True)
class Plan:
    seconds: float
    warmup: float
    sweep: tuple[int, ...]
    sweep_models: tuple[str, ...]
    saturation: int
    #: Rounds of the compared windows (ratios are medians over rounds).
    rounds: int


FULL = Plan(3.0, 1.0, (1, 2, 4, 8, 16, 32, 64), ("mlp", "cnn", "text"), 64, 3)
QUICK = Plan(0.6, 0.3, (1, 8), ("mlp",), 16, 1)


def sample_inputs(model: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if model in ("mlp", "null"):
        return {"INPUT__0": rng.standard_normal((1, 64), dtype=np.float32)}
    if model == "cnn":
        return {"INPUT__0": rng.standard_normal((1, 3, 64, 64), dtype=np.float32)}
    return {"TOKENS": rng.integers(1, 1000, (1, 16), dtype=np.int64)}


def _statistics(address: str, model: str) -> tuple[int, int] | None:
    """(inference_count, execution_count) from ModelStatistics, or None if unsupported."""
    import grpc

    from batchwire.protos import grpc_service_pb2 as pb
    from batchwire.protos import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=5)
        except grpc.RpcError:
            return None
    if not stats.model_stats:
        return None
    return stats.model_stats[0].inference_count, stats.model_stats[0].execution_count


def measure(
    address: str, model: str, concurrency: int, plan: Plan, *, streaming: bool = False
) -> dict[str, Any]:
    """One load window; adds the mean batch size when the server reports statistics."""
    request = build_request(model, sample_inputs(model))
    before = _statistics(address, model)
    result = run_load(
        address,
        request,
        items_per_request=1,
        concurrency=concurrency,
        seconds=plan.seconds,
        warmup=plan.warmup,
        streaming=streaming,
    )
    after = _statistics(address, model)
    row: dict[str, Any] = {"model": model, **result.summary(), "mean_batch": None}
    if before and after and after[1] > before[1]:
        row["mean_batch"] = round((after[0] - before[0]) / (after[1] - before[1]), 2)
    return row


def _median(values: list[float]) -> float:
    return float(np.median(values))


def run(out: Path, plan: Plan) -> dict[str, Any]:
    from batchwire.examples.export import export_examples

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="batchwire-bench-") as tmp:
        repo = Path(tmp)
        export_examples(repo)
        started = time.time()
        mlp_module = load_torchscript(repo / "mlp" / "1" / "model.pt")
        cnn_module = load_torchscript(repo / "cnn" / "1" / "model.pt")
        cnn_sample = torch.from_numpy(sample_inputs("cnn")["INPUT__0"])
        rounds: list[dict[str, Any]] = []
        with (
            ServerProcess(repo, log_path=out / "server.log") as server,
            BareServerProcess() as bare_server,
        ):
            address = server.address
            # Each round measures every compared pair back to back, so that drift on a
            # shared machine hits both sides; ratios are medians over rounds. The raw
            # references run in this process while the servers sit idle.
            for _ in range(plan.rounds):
                row: dict[str, Any] = {
                    "low_load_mlp": measure(address, "mlp", 1, plan),
                    "low_load_bare": measure(bare_server.address, "null", 1, plan),
                    "raw_mlp_batch1_ms": raw_latency_ms(
                        mlp_module, sample_inputs("mlp")["INPUT__0"]
                    ),
                    "mlp_c32": measure(address, "mlp", 32, plan),
                    "null_c32": measure(address, "null", 32, plan),
                    "bare_grpc_c32": measure(bare_server.address, "null", 32, plan),
                    "mlp_stream_c32": measure(address, "mlp", 32, plan, streaming=True),
                    "bare_stream_c32": measure(
                        bare_server.address, "null", 32, plan, streaming=True
                    ),
                    "cnn_saturation": measure(address, "cnn", plan.saturation, plan),
                }
                batch = max(1, round(row["cnn_saturation"]["mean_batch"] or 32))
                row["served_cnn_batch"] = batch
                row["raw_cnn_items_per_s"] = raw_throughput(
                    cnn_module, cnn_sample.repeat(batch, 1, 1, 1), plan.seconds
                )
                rounds.append(row)
            sweep = [measure(address, m, c, plan) for m in plan.sweep_models for c in plan.sweep]
        raw_cnn_max = raw_throughput(cnn_module, cnn_sample.repeat(32, 1, 1, 1), plan.seconds)

    def per_round(value: Callable[[dict[str, Any]], float]) -> float:
        return round(_median([value(r) for r in rounds]), 3)

    ratios = {
        "cnn_served_over_raw": per_round(
            lambda r: r["cnn_saturation"]["throughput"] / r["raw_cnn_items_per_s"]
        ),
        "mlp_over_null": per_round(
            lambda r: r["mlp_c32"]["throughput"] / r["null_c32"]["throughput"]
        ),
        "low_load_overhead_ms": per_round(
            lambda r: r["low_load_mlp"]["p50_ms"] - r["raw_mlp_batch1_ms"]
        ),
    }
    context = {
        "null_over_bare_grpc": per_round(
            lambda r: r["null_c32"]["throughput"] / r["bare_grpc_c32"]["throughput"]
        ),
        # Streaming (one ModelStreamInfer stream, 32 in flight) against the bare
        # server's stream: where gRPC's per-call cost is smallest, batchwire's own shows.
        "mlp_stream_over_bare_stream": per_round(
            lambda r: r["mlp_stream_c32"]["throughput"] / r["bare_stream_c32"]["throughput"]
        ),
        # The same low-load figure with the transport taken out: what batchwire adds
        # to a bare gRPC round trip (the bare server at one request in flight).
        "low_load_overhead_over_bare_grpc_ms": per_round(
            lambda r: (
                r["low_load_mlp"]["p50_ms"] - r["low_load_bare"]["p50_ms"] - r["raw_mlp_batch1_ms"]
            )
        ),
    }
    report = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "cuda": torch.cuda.is_available(),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "plan": {
            "seconds": plan.seconds,
            "warmup": plan.warmup,
            "rounds": plan.rounds,
            "sweep": list(plan.sweep),
        },
        "ratios": ratios,
        "context": context,
        "targets": TARGETS,
        "met": {
            "cnn_served_over_raw": ratios["cnn_served_over_raw"] >= TARGETS["cnn_served_over_raw"],
            "mlp_over_null": ratios["mlp_over_null"] >= TARGETS["mlp_over_null"],
            "low_load_overhead_ms": ratios["low_load_overhead_ms"]
            <= TARGETS["low_load_overhead_ms"],
        },
        "references": {
            "raw_cnn_items_per_s_at_batch_32": round(raw_cnn_max, 1),
            "raw_mlp_batch1_ms": per_round(lambda r: r["raw_mlp_batch1_ms"]),
        },
        # The last round's windows (every round is in "rounds").
        "windows": {key: value for key, value in rounds[-1].items() if isinstance(value, dict)},
        "rounds": rounds,
        "sweep": sweep,
    }
    (out / "batching.json").write_text(json.dumps(report, indent=2))
    plot(sweep, out / "batching.png")
    return report


def plot(sweep: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for model in dict.fromkeys(row["model"] for row in sweep):
        rows = [r for r in sweep if r["model"] == model]
        xs = [r["concurrency"] for r in rows]
        left.plot(xs, [r["throughput"] for r in rows], marker="o", label=model)
        right.plot(xs, [r["p99_ms"] for r in rows], marker="o", label=model)
    for axis, title, label in (
        (left, "Throughput", "inferences / s"),
        (right, "p99 latency", "ms"),
    ):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent requests")
        axis.set_ylabel(label)
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--seconds", type=float, default=None, help="measurement window per point")
    parser.add_argument("--quick", action="store_true", help="a few seconds in all (smoke test)")
    ns = parser.parse_args(argv)
    plan = QUICK if ns.quick else FULL
    if ns.seconds:
        plan = Plan(
            ns.seconds, plan.warmup, plan.sweep, plan.sweep_models, plan.saturation, plan.rounds
        )
    report = run(ns.out, plan)
    for key, value in report["ratios"].items():
        verdict = "met" if report["met"][key] else "MISSED"
        print(f"{key}: {value} (target {TARGETS[key]}, {verdict})")
    for key, value in report["context"].items():
        print(f"{key}: {value} (context, no target)")
    print(f"wrote {ns.out / 'batching.json'} and {ns.out / 'batching.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
