"""Tracing overhead: served throughput with every request traced vs tracing off, same run.

``python -m batchwire.bench.tracing_overhead [--out results/tracing] [--seconds 3]
[--rounds 3] [--concurrency 32] [--exporter none|otlp-grpc] [--traceparent]``

Two ``batchwire serve`` subprocesses on the ``mlp`` example: one with tracing off,
one with ``--trace-mode always`` (every request traced: a server span, five phase
spans, and a batch span per batch). Spans go to an exporter that drops them in
the server process (``none``, the default: the cost of sampling, building and
queueing spans) or, with ``--exporter otlp-grpc``, over OTLP/gRPC to a receiver
in this process (adds the exporter's protobuf encoding). A closed-loop asyncio
gRPC load generator (pre-encoded requests, ``--concurrency`` in flight) drives
them in alternating windows (off, traced, off, traced...) so drift on a shared
machine hits both alike. With ``--traceparent`` every request carries a sampled
W3C traceparent (the parent-based path, including context extraction).

Writes ``tracing_overhead.json`` and ``tracing_overhead.png`` into ``--out``: the
throughput of each window and ``ratio`` = traced / untraced (target >= 0.85).
The target is reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc

TARGET = 0.85
MODEL = "mlp"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _request() -> pb.ModelInferRequest:
    array = np.random.default_rng(0).standard_normal((1, 64), dtype=np.float32)
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="INPUT__0", datatype="FP32", shape=array.shape)
    request.raw_input_contents.append(array.tobytes())
    return request


async def _window(
    address: str, concurrency: int, warmup: float, seconds: float, metadata: tuple | None
) -> dict:
    request = _request()
    async with grpc.aio.insecure_channel(address) as channel:
        infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        latencies: list[float] = []
        errors = 0
        sent = 0
        start = time.perf_counter()
        measure_from = start + warmup
        stop_at = measure_from + seconds

        async def worker() -> None:
            nonlocal errors, sent
            while (now := time.perf_counter()) < stop_at:
                try:
                    await infer(request, metadata=metadata)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                sent += 1
                if now >= measure_from:
                    latencies.append(time.perf_counter() - now)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - measure_from
    return {
        "requests": len(latencies),
        "seconds": round(elapsed, 3),
        "throughput": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
        "errors": errors,
        "sent": sent,
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 3) if latencies else None,
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 3) if latencies else None,
    }


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run_window(pid: int, *args: object) -> dict:
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    cpu_before = _cpu_seconds(pid)
    result = runner(_window(*args))  # type: ignore[arg-type]
    cpu_after = _cpu_seconds(pid)
    if cpu_before is not None and cpu_after is not None and result["sent"]:
        # Server CPU per answered request over the whole window (warmup included).
        result["server_cpu_us_per_request"] = round(
            (cpu_after - cpu_before) / result["sent"] * 1e6, 1
        )
    return result


def run(
    out: Path,
    *,
    seconds: float = 3.0,
    warmup: float = 0.5,
    rounds: int = 3,
    concurrency: int = 32,
    exporter: str = "none",
    traceparent: bool = False,
) -> dict:
    """Measure, write ``tracing_overhead.json`` / ``.png`` into ``out``, return the report."""
    from batchwire.bench.server_process import ServerProcess
    from batchwire.examples.export import export_examples
    from batchwire.telemetry.receiver import OtlpReceiver

    out.mkdir(parents=True, exist_ok=True)
    receiver = OtlpReceiver().start() if exporter == "otlp-grpc" else None
    traced_args = ["--trace-mode", "always", "--trace-exporter", exporter, "--metrics-port", "0"]
    if receiver is not None:
        traced_args += ["--trace-endpoint", receiver.endpoint]
    metadata = (("traceparent", TRACEPARENT),) if traceparent else None
    windows: list[dict] = []
    try:
        with tempfile.TemporaryDirectory(prefix="batchwire-bench-tracing-") as tmp:
            repo = Path(tmp)
            export_examples(repo, [MODEL])
            plain = ServerProcess(repo, "--trace-mode", "off", "--metrics-port", "0")
            traced = ServerProcess(repo, *traced_args, log_path=out / "traced-server.log")
            with plain, traced:
                for index in range(rounds):
                    for label, server in (("untraced", plain), ("traced", traced)):
                        result = _run_window(
                            server._proc.pid,  # type: ignore[union-attr]
                            server.address,
                            concurrency,
                            warmup,
                            seconds,
                            metadata,
                        )
                        windows.append({"round": index, "mode": label, **result})
    finally:
        if receiver is not None:
            receiver.stop()

    def mean(mode: str) -> float:
        values = [w["throughput"] for w in windows if w["mode"] == mode]
        return statistics.fmean(values) if values else 0.0

    untraced, traced_rps = mean("untraced"), mean("traced")
    ratio = round(traced_rps / untraced, 3) if untraced else 0.0
    cpu = {}
    for mode in ("untraced", "traced"):
        values = [
            w["server_cpu_us_per_request"]
            for w in windows
            if w["mode"] == mode and "server_cpu_us_per_request" in w
        ]
        cpu[mode] = round(statistics.median(values), 1) if values else None
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "model": MODEL,
        "concurrency": concurrency,
        "seconds_per_window": seconds,
        "rounds": rounds,
        "exporter": exporter,
        "traceparent": traceparent,
        "untraced_rps": round(untraced, 1),
        "traced_rps": round(traced_rps, 1),
        "ratio": ratio,
        "target": TARGET,
        "met": ratio >= TARGET,
        # Less sensitive to other load on a shared machine than throughput:
        "server_cpu_us_per_request": cpu,
        "cpu_ratio": (
            round(cpu["untraced"] / cpu["traced"], 3) if cpu["untraced"] and cpu["traced"] else None
        ),
        "spans_received": len(receiver.spans) if receiver is not None else None,
        "windows": windows,
    }
    (out / "tracing_overhead.json").write_text(json.dumps(report, indent=2))
    plot(report, out / "tracing_overhead.png")
    return report


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = report["windows"]
    fig, axis = plt.subplots(figsize=(7.5, 4))
    colors = {"untraced": "#4c72b0", "traced": "#dd8452"}
    xs = range(len(windows))
    axis.bar(
        xs,
        [w["throughput"] for w in windows],
        color=[colors[w["mode"]] for w in windows],
    )
    axis.set_xticks(list(xs), [f"{w['mode']}\nround {w['round']}" for w in windows], fontsize=8)
    for mode, color in colors.items():
        axis.axhline(report[f"{mode}_rps"], color=color, linestyle="--", linewidth=1, label=mode)
    axis.set_ylabel("requests / s")
    axis.set_title(
        f"Tracing overhead on '{report['model']}' (c={report['concurrency']}, "
        f"exporter {report['exporter']}): traced/untraced = {report['ratio']} "
        f"(target >= {report['target']})",
        fontsize=9,
    )
    axis.legend()
    axis.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/tracing"))
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per window")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds per window")
    parser.add_argument("--rounds", type=int, default=3, help="untraced/traced window pairs")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--exporter", choices=("none", "otlp-grpc"), default="none")
    parser.add_argument("--traceparent", action="store_true", help="send a sampled traceparent")
    ns = parser.parse_args(argv)
    report = run(
        ns.out,
        seconds=ns.seconds,
        warmup=ns.warmup,
        rounds=ns.rounds,
        concurrency=ns.concurrency,
        exporter=ns.exporter,
        traceparent=ns.traceparent,
    )
    verdict = "met" if report["met"] else "MISSED"
    print(
        f"untraced {report['untraced_rps']} req/s, traced {report['traced_rps']} req/s: "
        f"ratio {report['ratio']} (target {TARGET}, {verdict})"
    )
    print(f"wrote {ns.out / 'tracing_overhead.json'} and {ns.out / 'tracing_overhead.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
