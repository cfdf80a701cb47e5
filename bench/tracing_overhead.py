"""Tracing overhead: served throughput with every request traced vs tracing off, same run.

``python -m batchwire.bench.tracing_overhead [--out results/tracing] [--seconds 1]
[--rounds 20] [--concurrency 32] [--model mlp] [--exporter none|otlp-grpc]
[--traceparent] [--rate N] [--in-process] [--load auto|python|perf_analyzer]
[--perf-analyzer PATH]``

One ``batchwire serve`` subprocess on an example model, started with
``--trace-mode always``, under one closed loop of ``--concurrency`` gRPC calls
(``--load``, below) that runs without a break from start to end. The
benchmark switches tracing off and on through the TraceSetting RPC (global
``trace_level`` OFF / TIMESTAMPS), waits ``--warmup`` seconds, and counts the calls
that finish in the next ``--seconds``: untraced, traced, untraced, traced... So both
modes run on the same process, the same warm model, the same connection and the same
load, in alternating windows, and drift on a shared machine hits both alike; no
window pays for a new connection or a ramp-up of its own. Traced means every
request: a server span with its phases as events, plus one ``batch`` span per batch.
With ``--exporter otlp-grpc`` (the default) spans go over OTLP/gRPC to a receiver in
its own process, and the server's exporter
process (building and encoding spans) counts in the server's CPU; the warmup after
each switch (``SETTLE_S`` by default) is longer than spans can wait on their way out,
so a traced window's export does not land in the untraced window after it. With
``--exporter none`` the server records spans and drops them (the cost of sampling and
recording on the event loop). ``--rate N``
traces one request in N instead (Triton's ``trace_rate``, set with the same RPC):
what sampling costs at the rates SREs usually keep. With ``--traceparent`` every
request carries a sampled W3C traceparent (the parent-based path, context extraction
included). The load generator (``--load``) is Triton's C++ ``perf_analyzer`` when one
that runs is found (``scripts/install-perf-analyzer.sh`` installs it), else this
process's asyncio client; either can be named. Under perf_analyzer each window is
counted by the server (answered requests in ModelStatistics), without client
latencies. On the 2-vCPU development VM the asyncio client's traced windows lose
more, for reasons not settled (docs/observability.md, "The tracing benchmark").

Writes ``tracing_overhead.json`` and ``tracing_overhead.png`` into ``--out``:
every window's throughput, latency and mean batch (items per model execution,
from ModelStatistics), on Linux the CPU per request of the server and its child
processes (``cpu_ratio`` = untraced / traced CPU per request); ``ratio`` = mean
traced / mean untraced throughput and ``round_ratio`` = the median of the
per-round ratios (each traced window over the untraced one just before it;
sturdier on a noisy machine) with their quartiles in ``round_ratio_quartiles``
(the spread between rounds says how far one run can be trusted: on the 2-vCPU
development VM a window's throughput swings by up to 2x within a minute).
Target >= 0.85, reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import numpy as np

from batchwire.bench.server_process import cpu_seconds, terminate
from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc
from batchwire.telemetry.span_export import BATCH_DELAY_S, EXPORT_HOLD_S

TARGET = 0.85
#: Unmeasured seconds after each switch: longer than a span can wait in the server
#: (``BATCH_DELAY_S``) plus in the exporter process (``EXPORT_HOLD_S``) before export.
SETTLE_S = round(BATCH_DELAY_S + EXPORT_HOLD_S + 0.1, 3)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _request(model: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    array: np.ndarray
    if model == "text":
        array = np.arange(1, 17, dtype=np.int64).reshape(1, 16)
        request.inputs.add(name="TOKENS", datatype="INT64", shape=array.shape)
    else:
        shape = (1, 3, 64, 64) if model == "cnn" else (1, 64)
        array = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        request.inputs.add(name="INPUT__0", datatype="FP32", shape=array.shape)
    request.raw_input_contents.append(array.tobytes())
    return request


class _Load:
    """A closed loop of ``concurrency`` calls that runs for the whole benchmark.

    The load never stops between windows, so no window pays for a new channel or a
    ramp-up of its own. Each finished call appends (finish time, latency, ok) to
    ``done``; a window is a slice of it.
    """

    def __init__(
        self,
        infer: Callable[..., Awaitable[object]],
        request: pb.ModelInferRequest,
        metadata: tuple[tuple[str, str], ...] | None,
    ) -> None:
        self._infer = infer
        self._request = request
        self._metadata = metadata
        self._stop = False
        self._tasks: list[asyncio.Task] = []
        self.done: list[tuple[float, float, bool]] = []

    async def _worker(self) -> None:
        infer, request, metadata, done = self._infer, self._request, self._metadata, self.done
        while not self._stop:
            began = time.perf_counter()
            try:
                await infer(request, metadata=metadata)
                ok = True
            except grpc.aio.AioRpcError:
                ok = False
            now = time.perf_counter()
            done.append((now, now - began, ok))

    def start(self, concurrency: int) -> None:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(concurrency)]

    async def stop(self) -> None:
        """Let every call in flight finish, then return."""
        self._stop = True
        await asyncio.gather(*self._tasks)

    def window(self, first: int, since: float, until: float) -> dict:
        """Calls finished in [since, until), looking at ``done[first:]``."""
        latencies = []
        errors = 0
        for finished, latency, ok in itertools.islice(self.done, first, None):
            if since <= finished < until:
                if ok:
                    latencies.append(latency)
                else:
                    errors += 1
        elapsed = until - since
        return {
            "requests": len(latencies),
            "seconds": round(elapsed, 3),
            "throughput": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
            "errors": errors,
            "p50_ms": _percentile_ms(latencies, 50),
            "p99_ms": _percentile_ms(latencies, 99),
        }


class _PerfAnalyzerLoad:
    """Triton's ``perf_analyzer`` keeping ``concurrency`` calls in flight, in its own process.

    Triton's own load tool, a C++ client outside this process's GIL (measured on the
    2-vCPU VM: 155-174 us of CPU per call, against 199-254 us for the asyncio client).
    It measures nothing for us: every window is counted by the server (ModelStatistics).
    It runs one measurement of ``seconds`` and is stopped as soon as the benchmark ends.
    """

    def __init__(
        self, binary: str, address: str, model: str, concurrency: int, seconds: float
    ) -> None:
        args = [
            binary,
            "-m",
            model,
            "-u",
            address,
            "-i",
            "grpc",
            "--concurrency-range",
            f"{concurrency}:{concurrency}",
            "--measurement-mode",
            "time_windows",
            "--measurement-interval",
            str(int(seconds * 1000)),
            "--max-trials",
            "1",
            "--stability-percentage",
            "999",
        ]
        if model == "text":  # a variable-length input: perf_analyzer needs its shape
            args += ["--shape", "TOKENS:16"]
        self._model = model
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop)
        self._proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)

    async def started(self, stub: pb_grpc.GRPCInferenceServiceStub, timeout: float = 60.0) -> None:
        """Return once the server answers its requests; raise if it failed to start."""
        first = (await _counts(stub, self._model)).successes
        deadline = time.monotonic() + timeout
        while (await _counts(stub, self._model)).successes == first:
            self.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"perf_analyzer sent no request in {timeout:.0f} s")
            await asyncio.sleep(0.2)

    def check(self) -> None:
        """Raise if perf_analyzer is no longer running (the load stopped)."""
        code = self._proc.poll()
        if code is not None:
            self._log.seek(0)
            tail = self._log.read()[-2000:]
            self._log.close()
            raise RuntimeError(f"perf_analyzer exited with status {code}:\n{tail}")

    def stop(self) -> None:
        terminate(self._proc, 10)
        self._log.close()


def _percentile_ms(latencies: list[float], q: float) -> float | None:
    return round(float(np.percentile(latencies, q)) * 1e3, 3) if latencies else None


async def _drive(
    address: str,
    pid: int | None,
    receiver: int | None,
    *,
    model: str,
    concurrency: int,
    warmup: float,
    seconds: float,
    rounds: int,
    rate: int,
    metadata: tuple[tuple[str, str], ...] | None,
    perf_analyzer: str | None = None,
) -> list[dict]:
    """Alternate untraced and traced windows under one uninterrupted load.

    The load: this process's asyncio loop (``_Load``), or ``perf_analyzer`` (the path
    of Triton's binary) in its own process; its windows are counted by the server.

    Each window: switch tracing (TraceSetting), let ``warmup`` pass so that calls
    started under the other mode finish and the last traced window's spans are
    exported (see ``SETTLE_S``: their export cost must not land in an untraced
    window), then measure ``seconds``.
    """
    request = _request(model)
    windows: list[dict] = []
    async with (
        grpc.aio.insecure_channel(address) as channel,
        grpc.aio.insecure_channel(address) as control,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(control)
        load: _Load | None = None
        external: _PerfAnalyzerLoad | None = None
        if perf_analyzer is None:
            load = _Load(pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer, request, metadata)
            load.start(concurrency)
        else:
            # Long enough for every window and switch, with room to spare: it is
            # stopped once the last window is measured.
            duration = 30.0 + rounds * 2 * (warmup + seconds + 1.0)
            external = _PerfAnalyzerLoad(perf_analyzer, address, model, concurrency, duration)
        try:
            if external is not None:
                await external.started(stub)
            await asyncio.sleep(warmup)
            for index in range(rounds):
                for mode in ("untraced", "traced"):
                    await _set_tracing(stub, mode == "traced", rate)
                    await asyncio.sleep(warmup)
                    first = 0 if load is None else len(load.done)
                    counts = await _counts(stub, model)
                    cpu = _cpu_seconds(pid, receiver) if pid is not None else None
                    since = time.perf_counter()
                    await asyncio.sleep(seconds)
                    until = time.perf_counter()
                    cpu_after = _cpu_seconds(pid, receiver) if pid is not None else None
                    counts_after = await _counts(stub, model)
                    if load is None:
                        result = _server_window(counts, counts_after, since, until)
                    else:
                        result = load.window(first, since, until)
                    executions = counts_after.executions - counts.executions
                    if executions:
                        items = counts_after.items - counts.items
                        result["mean_batch"] = round(items / executions, 2)
                    if cpu is not None and cpu_after is not None and result["requests"]:
                        per_request = {
                            part: round((cpu_after[part] - cpu[part]) / result["requests"] * 1e6, 1)
                            for part in cpu
                        }
                        # The server and its exporter process: what tracing costs the host.
                        result["server_cpu_us_per_request"] = round(
                            per_request["server"] + per_request["exporter"], 1
                        )
                        result["cpu_us_per_request"] = per_request
                    if external is not None:
                        external.check()
                    windows.append({"round": index, "mode": mode, **result})
        finally:
            if load is not None:
                await load.stop()
            if external is not None:
                external.stop()
    return windows


async def _set_tracing(stub: pb_grpc.GRPCInferenceServiceStub, on: bool, rate: int) -> None:
    """Trace every ``rate``-th request from now on, or none; fail if the server disagrees."""
    request = pb.TraceSettingRequest()
    level = ["TIMESTAMPS" if on else "OFF"]
    request.settings["trace_level"].value.extend(level)
    request.settings["trace_rate"].value.append(str(rate))
    response = await stub.TraceSetting(request, timeout=10)
    settings = response.settings
    if list(settings["trace_level"].value) != level or list(settings["trace_rate"].value) != [
        str(rate)
    ]:
        raise RuntimeError(
            f"the server did not take trace settings {level}, rate {rate}: {settings}"
        )


class _Counts(NamedTuple):
    """A model's counters in ModelStatistics at one moment."""

    items: int
    executions: int
    #: Requests answered successfully / with an error.
    successes: int
    failures: int


async def _counts(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> _Counts:
    response = await stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=10)
    stats = response.model_stats[0]
    return _Counts(
        stats.inference_count,
        stats.execution_count,
        stats.inference_stats.success.count,
        stats.inference_stats.fail.count,
    )


def _server_window(before: _Counts, after: _Counts, since: float, until: float) -> dict:
    """A window counted by the server (the load generator reports nothing per window)."""
    requests = after.successes - before.successes
    elapsed = until - since
    return {
        "requests": requests,
        "seconds": round(elapsed, 3),
        "throughput": round(requests / elapsed, 1) if elapsed > 0 else 0.0,
        "errors": after.failures - before.failures,
        "p50_ms": None,
        "p99_ms": None,
    }


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children += [int(child) for child in task.read_text().split()]
        except OSError:
            continue
    return children


def _cpu_seconds(pid: int, receiver: int | None) -> dict[str, float] | None:
    """CPU time so far of the server process, of its children (the span exporter
    process) and of the OTLP receiver process when there is one."""
    server = cpu_seconds(pid)
    if server is None:
        return None
    parts = {
        "server": server,
        "exporter": sum(cpu_seconds(child) or 0.0 for child in _children(pid)),
    }
    if receiver is not None:
        parts["receiver"] = cpu_seconds(receiver) or 0.0
    return parts


def _run_driver(driver: Coroutine[Any, Any, list[dict]]) -> list[dict]:
    """Run ``driver`` on uvloop when it is installed (as the server does), else asyncio."""
    runner: Callable[[Coroutine[Any, Any, list[dict]]], list[dict]] = asyncio.run
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        pass
    return runner(driver)


class _ReceiverProcess:
    """``python -m batchwire.telemetry.receiver --count-only`` on a free port.

    In its own process: receiving and parsing spans in this one would take CPU and
    the GIL from the load generator and make tracing look costlier than it is.
    """

    def __init__(self) -> None:
        import sys

        from batchwire.bench.server_process import free_port

        port = free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "batchwire.telemetry.receiver",
                "--port",
                str(port),
                "--count-only",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None  # stdout=PIPE
        line = self._proc.stdout.readline()
        if not line.startswith("listening"):
            self._proc.kill()
            raise RuntimeError(f"the OTLP receiver did not start: {line!r}")

    @property
    def pid(self) -> int:
        return self._proc.pid

    def stop(self) -> int | None:
        """Stop it; the number of spans it received."""
        self._proc.terminate()
        out, _ = self._proc.communicate(timeout=30)
        try:
            return int(json.loads(out.strip().splitlines()[-1])["spans"])
        except (ValueError, IndexError, KeyError):
            return None


@contextlib.contextmanager
def _server(
    repo: Path, out: Path, exporter: str, endpoint: str | None, in_process: bool
) -> Iterator[tuple[str, int | None]]:
    """(address, pid or None) of a server with every request traced."""
    if in_process:
        from batchwire.server.app import ServerThread
        from batchwire.server.settings import ServerSettings

        settings = ServerSettings(
            host="127.0.0.1",
            port=0,
            model_repository=repo,
            trace_mode="always",
            trace_exporter=exporter,
            trace_endpoint=endpoint,
        )
        with ServerThread(settings) as server:
            yield server.address, None
        return
    from batchwire.bench.server_process import ServerProcess

    args = ["--trace-mode", "always", "--trace-exporter", exporter, "--metrics-port", "0"]
    if endpoint is not None:
        args += ["--trace-endpoint", endpoint]
    with ServerProcess(repo, *args, log_path=out / "server.log") as server:
        yield server.address, server.pid


def run(
    out: Path,
    *,
    seconds: float = 1.0,
    warmup: float = SETTLE_S,
    rounds: int = 20,
    concurrency: int = 32,
    model: str = "mlp",
    exporter: str = "otlp-grpc",
    traceparent: bool = False,
    rate: int = 1,
    in_process: bool = False,
    repository: Path | None = None,
    load: str = "auto",
    perf_analyzer: str | None = None,
) -> dict:
    """Measure, write ``tracing_overhead.json`` / ``.png`` into ``out``, return the report.

    ``in_process`` runs the server in this process (quick smoke runs; it shares
    the GIL with the load generator, so the ratio means less). ``repository``
    must hold ``model`` (default: the example exported to a temp dir). ``load``:
    ``python`` (this process's asyncio client), ``perf_analyzer`` (Triton's C++ client,
    at ``perf_analyzer`` or on PATH), or ``auto``: perf_analyzer when one that runs is
    found (see ``_perf_analyzer_binary``), else the asyncio client.
    """
    from batchwire.examples.export import export_examples

    if rate < 1:
        raise ValueError(f"rate must be >= 1 (one request in N traced), got {rate}")
    binary = _perf_analyzer_binary(load, perf_analyzer, traceparent)
    out.mkdir(parents=True, exist_ok=True)
    receiver = _ReceiverProcess() if exporter == "otlp-grpc" else None
    metadata = (("traceparent", TRACEPARENT),) if traceparent else None
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    try:
        with tempfile.TemporaryDirectory(prefix="batchwire-bench-tracing-") as tmp:
            repo = repository
            if repo is None:
                repo = Path(tmp)
                export_examples(repo, [model])
            endpoint = receiver.endpoint if receiver is not None else None
            with _server(repo, out, exporter, endpoint, in_process) as (address, pid):
                windows = _run_driver(
                    _drive(
                        address,
                        pid,
                        receiver.pid if receiver is not None else None,
                        model=model,
                        concurrency=concurrency,
                        warmup=warmup,
                        seconds=seconds,
                        rounds=rounds,
                        rate=rate,
                        metadata=metadata,
                        perf_analyzer=binary,
                    )
                )
    finally:
        spans_received = receiver.stop() if receiver is not None else None

    def mean(mode: str) -> float:
        values = [w["throughput"] for w in windows if w["mode"] == mode]
        return statistics.fmean(values) if values else 0.0

    untraced, traced = mean("untraced"), mean("traced")
    ratio = round(traced / untraced, 3) if untraced else 0.0
    pairs = [
        windows[i + 1]["throughput"] / windows[i]["throughput"]
        for i in range(0, len(windows) - 1, 2)
        if windows[i]["throughput"]
    ]
    cpu = {}
    for mode in ("untraced", "traced"):
        values = [
            w["server_cpu_us_per_request"]
            for w in windows
            if w["mode"] == mode and "server_cpu_us_per_request" in w
        ]
        cpu[mode] = round(statistics.median(values), 1) if values else None
    parts: dict[str, dict[str, float]] = {}
    for mode in ("untraced", "traced"):
        mode_windows = [
            w["cpu_us_per_request"]
            for w in windows
            if w["mode"] == mode and "cpu_us_per_request" in w
        ]
        if mode_windows:
            parts[mode] = {
                part: round(statistics.median(w[part] for w in mode_windows), 1)
                for part in mode_windows[0]
            }
    tracing_cpu = (
        {
            part: round(parts["traced"][part] - parts["untraced"][part], 1)
            for part in parts["traced"]
        }
        if len(parts) == 2
        else None
    )
    batches = {}
    for mode in ("untraced", "traced"):
        values = [w["mean_batch"] for w in windows if w["mode"] == mode and "mean_batch" in w]
        batches[mode] = round(statistics.median(values), 2) if values else None
    # The client's latencies; perf_analyzer's are not per window (None then).
    latency = None
    if binary is None:
        latency = {
            mode: {
                key: round(statistics.median(w[key] for w in windows if w["mode"] == mode), 3)
                for key in ("p50_ms", "p99_ms")
            }
            for mode in ("untraced", "traced")
        }
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "started": started,
        "model": model,
        "concurrency": concurrency,
        "seconds_per_window": seconds,
        "rounds": rounds,
        "exporter": exporter,
        "traceparent": traceparent,
        #: One request in ``trace_rate`` traced (1: every request).
        "trace_rate": rate,
        "in_process": in_process,
        #: What kept the calls in flight: ``python`` (this process) or ``perf_analyzer``.
        "load_generator": "python" if binary is None else "perf_analyzer",
        "untraced_rps": round(untraced, 1),
        "traced_rps": round(traced, 1),
        "ratio": ratio,
        "round_ratio": round(statistics.median(pairs), 3) if pairs else None,
        "round_ratio_quartiles": _quartiles(pairs),
        "target": TARGET,
        "met": ratio >= TARGET,
        "server_cpu_us_per_request": cpu,
        #: Median over windows, per mode, of each process's CPU per answered request:
        #: the server, its span exporter process, the OTLP receiver.
        "cpu_us_per_request": parts,
        #: What tracing added per request (traced minus untraced medians), per process.
        "tracing_cpu_us_per_request": tracing_cpu,
        #: Median over windows, per mode.
        "latency_ms": latency,
        #: Median over windows of items per model execution, per mode.
        "mean_batch": batches,
        # untraced / traced server CPU per request: less sensitive to other load.
        "cpu_ratio": (
            round(cpu["untraced"] / cpu["traced"], 3) if cpu["untraced"] and cpu["traced"] else None
        ),
        "spans_received": spans_received,
        "windows": windows,
    }
    (out / "tracing_overhead.json").write_text(json.dumps(report, indent=2))
    plot(report, out / "tracing_overhead.png")
    return report


#: Where ``scripts/install-perf-analyzer.sh`` puts perf_analyzer (from the repository root).
INSTALLED_PERF_ANALYZER = Path(".venv-perf/perf_analyzer")


def _perf_analyzer_binary(load: str, path: str | None, traceparent: bool) -> str | None:
    """The perf_analyzer to run (None: the load is this process's own client).

    ``auto``: ``path`` when given, else the first that runs of $BATCHWIRE_PERF_ANALYZER,
    ``INSTALLED_PERF_ANALYZER`` and ``perf_analyzer`` on PATH; the asyncio client when
    none does, or when every request must carry a traceparent.
    """
    if load == "python":
        return None
    if load not in ("perf_analyzer", "auto"):
        raise ValueError(f"load must be 'auto', 'python' or 'perf_analyzer', got '{load}'")
    if traceparent:
        if load == "auto":
            return None
        raise ValueError("perf_analyzer cannot send a traceparent: its -H headers are HTTP only")
    if load == "perf_analyzer" or path is not None:
        return find_perf_analyzer(path)
    # None last: perf_analyzer on PATH (what find_perf_analyzer looks up without a path).
    named = os.environ.get("BATCHWIRE_PERF_ANALYZER")
    for candidate in [*([named] if named else []), str(INSTALLED_PERF_ANALYZER), None]:
        try:
            return find_perf_analyzer(candidate)
        except ValueError:
            continue
    return None


def find_perf_analyzer(path: str | None = None) -> str:
    """``path`` (default: ``perf_analyzer`` on PATH) once it runs; ValueError saying why not.

    The tritonclient wheel installs the binary, but it needs ``libcudart.so.12`` on the
    library path even without a GPU (``pip install nvidia-cuda-runtime-cu12``).
    """
    binary = path or shutil.which("perf_analyzer")
    if binary is None:
        raise ValueError("perf_analyzer is not on PATH")
    if not os.access(binary, os.X_OK):
        raise ValueError(f"no perf_analyzer executable at {binary!r}")
    try:
        probe = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ValueError(f"perf_analyzer at {binary!r} does not run: {exc}") from None
    if probe.returncode != 0:
        why = (probe.stderr or probe.stdout).strip()[-500:]
        raise ValueError(
            f"perf_analyzer at {binary!r} does not run (exit status {probe.returncode}): {why}"
        )
    return binary


def _quartiles(values: list[float]) -> list[float] | None:
    """[first quartile, median, third quartile] of ``values`` (None when empty)."""
    if not values:
        return None
    if len(values) == 1:
        return [round(values[0], 3)] * 3
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return [round(q1, 3), round(median, 3), round(q3, 3)]


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = report["windows"]
    fig, axis = plt.subplots(figsize=(max(6.0, 0.7 * len(windows) + 2), 4))
    colors = {"untraced": "#4c72b0", "traced": "#dd8452"}
    xs = list(range(len(windows)))
    axis.bar(xs, [w["throughput"] for w in windows], color=[colors[w["mode"]] for w in windows])
    axis.set_xticks(xs, [f"{w['mode']}\nround {w['round']}" for w in windows], fontsize=7)
    for mode, color in colors.items():
        axis.axhline(report[f"{mode}_rps"], color=color, linestyle="--", linewidth=1, label=mode)
    axis.set_ylabel("requests / s")
    axis.set_title(
        f"Tracing overhead, '{report['model']}' c={report['concurrency']} "
        f"({report['load_generator']}), exporter {report['exporter']}: traced/untraced {report['ratio']} (median per round "
        f"{report['round_ratio']}; target >= {report['target']})",
        fontsize=8,
    )
    axis.legend()
    axis.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/tracing"))
    parser.add_argument("--seconds", type=float, default=1.0, help="measured seconds per window")
    parser.add_argument(
        "--warmup", type=float, default=SETTLE_S, help="unmeasured seconds after each switch"
    )
    parser.add_argument("--rounds", type=int, default=20, help="untraced/traced window pairs")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--model", choices=("mlp", "null", "cnn", "text"), default="mlp")
    parser.add_argument(
        "--exporter",
        choices=("none", "otlp-grpc"),
        default="otlp-grpc",
        help="where spans go: a receiver process on loopback (default), or nowhere",
    )
    parser.add_argument("--traceparent", action="store_true", help="send a sampled traceparent")
    parser.add_argument("--rate", type=int, default=1, help="trace one request in N (default 1)")
    parser.add_argument(
        "--in-process", action="store_true", help="server in this process (quick smoke run)"
    )
    parser.add_argument(
        "--load",
        choices=("auto", "python", "perf_analyzer"),
        default="auto",
        help="what keeps the calls in flight: Triton's perf_analyzer when one that runs "
        "is found (auto, the default: $BATCHWIRE_PERF_ANALYZER, .venv-perf/perf_analyzer, "
        "PATH), else this process's asyncio client; or either of them, named",
    )
    parser.add_argument(
        "--perf-analyzer", default=None, help="path of perf_analyzer (default: see --load)"
    )
    ns = parser.parse_args(argv)
    report = run(
        ns.out,
        seconds=ns.seconds,
        warmup=ns.warmup,
        rounds=ns.rounds,
        concurrency=ns.concurrency,
        model=ns.model,
        exporter=ns.exporter,
        traceparent=ns.traceparent,
        rate=ns.rate,
        in_process=ns.in_process,
        load=ns.load,
        perf_analyzer=ns.perf_analyzer,
    )
    verdict = "met" if report["met"] else "MISSED"
    print(
        f"load generator {report['load_generator']}: untraced {report['untraced_rps']} req/s, traced {report['traced_rps']} req/s: "
        f"ratio {report['ratio']}, median per round {report['round_ratio']} "
        f"(quartiles {report['round_ratio_quartiles']}) "
        f"(target {TARGET}, {verdict}); server CPU us/request "
        f"{report['server_cpu_us_per_request']}, added by tracing per process "
        f"{report['tracing_cpu_us_per_request']}; mean batch {report['mean_batch']}; "
        f"latency ms {report['latency_ms']}"
    )
    print(f"wrote {ns.out / 'tracing_overhead.json'} and {ns.out / 'tracing_overhead.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
