"""``batchwire loadtest``: start a server if needed, run Locust headless, check the SLOs.

Every process runs on this machine: the server (``python -m batchwire serve``,
a subprocess so that Locust's gevent monkey-patching never meets the server's
asyncio and gRPC), Locust itself (standalone, or ``--master`` plus K
``--worker`` processes), and a metrics sampler thread in this process.
Nothing is sent before the options and the SLO file are validated, and only
loopback targets are accepted. Each model's requests are built from the
server's metadata once it answers (:mod:`batchwire.loadtest.workloads`); a
problem found there (a model that is not served, a missing ``--shape``, an
``--input-data`` file that does not fit) is a usage error too, raised before
any inference request is sent.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from batchwire.loadtest.hosts import normalize_target
from batchwire.loadtest.inputs import InputSpecError, parse_shapes
from batchwire.loadtest.latency import LatencyRecorder
from batchwire.loadtest.metrics import MetricsSampler, ServerView, check_metrics_url
from batchwire.loadtest.slo import Evaluation, SLOSpec, evaluate, load_slo
from batchwire.loadtest.workloads import (
    WORKLOADS_FILE,
    ModelNotServedError,
    ServerQueryError,
    Workload,
    WorkloadOptions,
    check_input_data_models,
    parse_input_data_options,
    parse_weighted_models,
    resolve_workloads,
    write_workloads,
)
from batchwire.protos import grpc_service_pb2 as pb
from batchwire.serve_process import ServerNotReadyError, ServerProcess, free_port, log_tail

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
LATENCY_FILE = "latency.json"
CSV_PREFIX = "locust"

#: Exit codes of ``batchwire loadtest``.
EXIT_PASS, EXIT_SLO_FAILED, EXIT_USAGE, EXIT_RUN_ERROR = 0, 1, 2, 3


class LoadTestError(RuntimeError):
    """The run could not be completed (server or Locust failed); exit code 3."""


class UsageError(ValueError):
    """Bad options or SLO file, found before any load was sent; exit code 2."""


_SPAN = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str, *, allow_zero: bool = False) -> float:
    """``"30s"``, ``"2m"``, ``"1m30s"``, ``"90"`` -> seconds."""
    value = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        pos, seconds = 0, 0.0
        for match in _SPAN.finditer(value):
            if match.start() != pos:
                break
            number, unit = float(match.group(1)), match.group(2)
            seconds += number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
            pos = match.end()
        if pos != len(value) or not value:
            raise UsageError(f"cannot read duration {text!r}; use e.g. 30s, 2m, 1m30s")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise UsageError(f"duration must be positive, got {text!r}")
    return seconds


# Options -------------------------------------------------------------------


@dataclass
class LoadTestOptions:
    """The options of ``batchwire loadtest`` (see :mod:`batchwire.loadtest.cli`)."""

    host: str | None = None
    slo: Path | None = None
    users: int = 4
    spawn_rate: float = 4.0
    duration: str = "30s"
    warmup: str | None = None  # None: the ramp-up time
    #: None: mlp,text; with model_repository, every model it serves.
    models: str | None = None
    mode: str = "unary"
    out: Path = Path("loadtest-report")
    workers: int = 0
    metrics_url: str | None = None
    timeout: float = 10.0
    #: Repository for the server the command starts (None: the built-in examples).
    model_repository: Path | None = None
    #: perf_analyzer's --shape NAME:d1,d2,... (batch dimension left out).
    shapes: list[str] = field(default_factory=list)
    #: Rows per request for batching models (None: 1; the examples: 1..4 at random).
    batch_size: int | None = None
    #: --input-data [MODEL=]FILE: .npz or perf_analyzer JSON.
    input_data: list[str] = field(default_factory=list)
    server_start_timeout: float = 180.0
    log: Callable[[str], None] = field(default=lambda message: print(message, file=sys.stderr))


@dataclass
class Plan:
    """Validated options: everything needed to run, decided before anything starts."""

    options: LoadTestOptions
    spec: SLOSpec
    #: The models named (empty: every model the server has ready).
    models: list[str]
    model_arg: str
    target: str | None
    duration_s: int
    warmup_s: float
    metrics_url: str | None
    workload_options: WorkloadOptions = field(default_factory=WorkloadOptions)


def plan(options: LoadTestOptions) -> Plan:
    """Validate every option and the SLO file; raises UsageError naming each problem.

    What needs the model's metadata (shapes, input data against the inputs)
    is checked once the server answers, by :func:`run`.
    """
    if options.models is None and options.model_repository is not None:
        weights: dict[str, int] = {}  # every model of the repository
    else:
        try:
            weights = parse_weighted_models(options.models)
        except ValueError as exc:
            raise UsageError(f"--models: {exc}") from exc
    if options.model_repository is not None:
        if options.host is not None:
            raise UsageError(
                "--model-repository is for the server this command starts; with --host the "
                "server is already running"
            )
        if not options.model_repository.is_dir():
            raise UsageError(f"--model-repository {options.model_repository}: no such folder")
    if options.batch_size is not None and options.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {options.batch_size}")
    try:
        workload_options = WorkloadOptions(
            shapes=parse_shapes(options.shapes),
            batch_size=options.batch_size,
            input_data=parse_input_data_options(options.input_data),
        )
        if weights:  # else every model of the repository: known once the server answers
            check_input_data_models(workload_options, list(weights))
    except InputSpecError as exc:
        raise UsageError(str(exc)) from exc
    if options.mode not in ("unary", "stream"):
        raise UsageError(f"--mode must be unary or stream, got {options.mode!r}")
    if options.users < 1:
        raise UsageError(f"--users must be >= 1, got {options.users}")
    if not options.spawn_rate > 0:
        raise UsageError(f"--spawn-rate must be > 0, got {options.spawn_rate}")
    if options.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {options.workers}")
    if options.workers > options.users:
        raise UsageError(f"--workers ({options.workers}) must not exceed --users ({options.users})")
    if not options.timeout > 0:
        raise UsageError(f"--timeout must be > 0, got {options.timeout}")
    duration = parse_duration(options.duration)
    if duration != int(duration):
        raise UsageError(
            f"--duration must be whole seconds (Locust's --run-time), got {options.duration!r}"
        )
    if options.warmup is None:
        warmup = min(math.ceil(options.users / options.spawn_rate), duration / 2)
    else:
        warmup = parse_duration(options.warmup, allow_zero=True)
    if warmup >= duration:
        raise UsageError(
            f"--warmup ({warmup:g} s) must be shorter than --duration ({duration:g} s)"
        )
    target = None
    if options.host is not None:
        try:
            target = normalize_target(options.host)
        except ValueError as exc:
            raise UsageError(f"--host: {exc}") from exc
    metrics_url = None
    if options.metrics_url:
        try:
            metrics_url = check_metrics_url(options.metrics_url)
        except ValueError as exc:
            raise UsageError(f"--metrics-url: {exc}") from exc
    try:
        # Any served model can be loaded, so the file may name any model; those not
        # in this run are reported as SKIP.
        spec = load_slo(options.slo)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return Plan(
        options,
        spec,
        list(weights),
        _model_arg(weights),
        target,
        int(duration),
        warmup,
        metrics_url,
        workload_options,
    )


def _model_arg(weights: dict[str, int]) -> str:
    return ",".join(f"{name}:{weight}" if weight != 1 else name for name, weight in weights.items())


# Server --------------------------------------------------------------------


def start_server(
    out: Path, log: Callable[[str], None], timeout: float, model_repository: Path | None = None
) -> ServerProcess:
    """Start ``python -m batchwire serve`` on free loopback ports, its metrics included.

    The server logs to ``out/server.log``; LoadTestError, quoting the log's last
    lines, when it exits or is not ready within ``timeout`` seconds.
    """
    server = ServerProcess(model_repository, metrics=True, log_path=out / "server.log")
    log(f"starting server: {shlex.join(server.command[1:])} (log: {server.log_path})")
    try:
        return server.start(timeout)
    except ServerNotReadyError as exc:
        raise LoadTestError(str(exc)) from None


def wait_until_ready(target: str, timeout: float) -> None:
    """Poll ServerReady at ``target`` until true; LoadTestError after ``timeout`` seconds."""
    from batchwire.clients.readiness import wait_until_ready as wait_ready

    try:
        wait_ready(target, timeout)
    except ServerNotReadyError as exc:
        raise LoadTestError(str(exc)) from None


def prepare_workloads(
    target: str, plan_: Plan, out: Path, log: Callable[[str], None]
) -> tuple[dict[str, Workload], dict[str, list[pb.ModelInferRequest]]]:
    """Each model's workload and request pool, from the server's metadata; written to ``out``.

    UsageError for what the options got wrong (a model that is not served, a
    missing --shape, an --input-data file that does not fit the model),
    LoadTestError when the server does not answer or a model is not ready.
    """
    try:
        workloads = resolve_workloads(target, plan_.models, plan_.workload_options)
        pools = {model: workload.build_pool(seed=0) for model, workload in workloads.items()}
    except ModelNotServedError as exc:
        raise UsageError(f"--models: {exc}") from exc
    except InputSpecError as exc:
        raise UsageError(str(exc)) from exc
    except ServerQueryError as exc:
        raise LoadTestError(str(exc)) from exc
    for model, workload in workloads.items():
        log(f"workload {model}: {workload.description} ({len(pools[model])} requests)")
    write_workloads(out, workloads, pools)
    return workloads, pools


def warm_up(
    target: str,
    pools: dict[str, list[pb.ModelInferRequest]],
    per_model: int = 8,
    timeout: float = 60.0,
) -> None:
    """Send a few requests per model (first-call costs), and fail early when one fails."""
    import grpc

    from batchwire.loadtest.workloads import MAX_REQUEST_BYTES, pick
    from batchwire.protos import grpc_service_pb2_grpc as pb_grpc

    limits = [
        ("grpc.max_send_message_length", MAX_REQUEST_BYTES),
        ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
    ]
    with grpc.insecure_channel(target, options=limits) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for model, pool in pools.items():
            for index in range(per_model):
                try:
                    stub.ModelInfer(pick(pool, f"warmup-{index}"), timeout=timeout)
                except grpc.RpcError as exc:
                    raise LoadTestError(
                        f"warm-up request to model '{model}' at {target} failed: "
                        f"{exc.code().name}: {exc.details()}"
                    ) from exc


# Locust ----------------------------------------------------------------------


def locust_commands(
    plan_: Plan, target: str, out: Path, model_arg: str | None = None
) -> tuple[list[str], list[list[str]]]:
    """The Locust command lines: (standalone or master, workers).

    ``model_arg``: the models and weights (default: the plan's); the requests
    are those :func:`prepare_workloads` wrote to ``out``.
    """
    options = plan_.options
    custom = [
        "--batchwire-models", model_arg or plan_.model_arg,
        "--batchwire-mode", options.mode,
        "--batchwire-timeout", f"{options.timeout:g}",
        "--batchwire-workloads", str(out / WORKLOADS_FILE),
    ]  # fmt: skip
    base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
    stop_timeout = max(2, math.ceil(min(options.timeout, 10.0)))
    main = [
        *base,
        "--headless",
        "--host", target,
        "--users", str(options.users),
        "--spawn-rate", f"{options.spawn_rate:g}",
        "--run-time", f"{plan_.duration_s}s",
        "--stop-timeout", str(stop_timeout),
        "--csv", str(out / CSV_PREFIX),
        "--csv-full-history",
        "--only-summary",
        "--exit-code-on-error", "0",
        "--loglevel", "INFO",
        "--batchwire-latency-file", str(out / LATENCY_FILE),
        *custom,
    ]  # fmt: skip
    workers: list[list[str]] = []
    if options.workers:
        port = free_port()
        main += [
            "--master",
            "--master-bind-host", "127.0.0.1",
            "--master-bind-port", str(port),
            "--expect-workers", str(options.workers),
            "--expect-workers-max-wait", "60",
        ]  # fmt: skip
        worker = [
            *base,
            "--worker",
            "--master-host", "127.0.0.1",
            "--master-port", str(port),
            "--loglevel", "INFO",
            *custom,
        ]  # fmt: skip
        workers = [list(worker) for _ in range(options.workers)]
    return main, workers


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # Our options are passed on the command line; stray env vars must not override them.
    for key in (
        "BATCHWIRE_LOADTEST_MODELS",
        "BATCHWIRE_LOADTEST_MODE",
        "BATCHWIRE_LOADTEST_LATENCY_FILE",
        "BATCHWIRE_LOADTEST_WORKLOADS",
    ):
        env.pop(key, None)
    return env


def run_locust(
    plan_: Plan, target: str, out: Path, log: Callable[[str], None], model_arg: str | None = None
) -> None:
    main_cmd, worker_cmds = locust_commands(plan_, target, out, model_arg)
    env = _child_env()
    processes: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    handles = []
    try:
        main_log = out / "locust.log"
        handle = main_log.open("wb")
        handles.append(handle)
        log(f"running locust for {plan_.duration_s} s: {shlex.join(main_cmd[1:])}")
        processes.append(
            (
                "locust",
                subprocess.Popen(main_cmd, stdout=handle, stderr=subprocess.STDOUT, env=env),
                main_log,
            )
        )
        for index, command in enumerate(worker_cmds):
            worker_log = out / f"locust-worker-{index + 1}.log"
            handle = worker_log.open("wb")
            handles.append(handle)
            processes.append(
                (
                    f"locust worker {index + 1}",
                    subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env),
                    worker_log,
                )
            )
        # Startup, the run, the stop timeout, writing results; then give up.
        deadline = time.monotonic() + plan_.duration_s + 90 + (60 if worker_cmds else 0)
        name, master, master_log = processes[0]
        while master.poll() is None:
            if time.monotonic() > deadline:
                raise LoadTestError(f"{name} did not finish in time; see {master_log}")
            for other_name, process, other_log in processes[1:]:
                if process.poll() not in (None, 0):
                    raise LoadTestError(
                        f"{other_name} exited with code {process.returncode}\n"
                        f"--- {other_log} (tail) ---\n{log_tail(other_log)}"
                    )
            time.sleep(0.2)
        if master.returncode != 0:
            raise LoadTestError(
                f"{name} exited with code {master.returncode}\n--- {master_log} (tail) ---\n{log_tail(master_log)}"
            )
        for _, process, _ in processes[1:]:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
    finally:
        for _, process, _ in processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        for handle in handles:
            handle.close()


# The whole run -------------------------------------------------------------


@dataclass
class Outcome:
    evaluation: Evaluation
    report: Path
    exit_code: int


def run(options: LoadTestOptions, plan_: Plan | None = None) -> Outcome:
    """Run the load test described by ``options``; see the module docstring."""
    plan_ = plan_ or plan(options)  # validates everything before any process starts
    log = options.log
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    for stale in (LATENCY_FILE, "report.html", "slo_results.json", WORKLOADS_FILE):
        (out / stale).unlink(missing_ok=True)
    server: ServerProcess | None = None
    sampler: MetricsSampler | None = None
    started = time.time()
    try:
        if plan_.target is None:
            server = start_server(out, log, options.server_start_timeout, options.model_repository)
            target, origin = (
                server.address,
                "started by batchwire loadtest (python -m batchwire serve)",
            )
        else:
            target, origin = plan_.target, "given with --host"
            wait_until_ready(target, 10.0)
        metrics_url = plan_.metrics_url or (server.metrics_url if server else None)
        log(f"server ready at {target}; reading the models' metadata")
        workloads, pools = prepare_workloads(target, plan_, out, log)
        models = list(workloads)
        model_arg = plan_.model_arg or _model_arg(dict.fromkeys(models, 1))
        log(f"warming up {', '.join(models)}")
        warm_up(target, pools)
        sampler = MetricsSampler(metrics_url).start()
        run_locust(plan_, target, out, log, model_arg)
    finally:
        if sampler is not None:
            sampler.stop()
        if server is not None:
            server.stop()
    latency_path = out / LATENCY_FILE
    if not latency_path.is_file():
        raise LoadTestError(f"locust wrote no {latency_path}; see {out / 'locust.log'}")
    recorder = LatencyRecorder.read(latency_path)
    start = recorder.start_time or started
    stop = recorder.stop_time or time.time()
    since = math.ceil(start + plan_.warmup_s) if plan_.warmup_s else start
    window_start = max(since, start)
    evaluation = evaluate(plan_.spec, recorder, models, window_start=window_start, window_end=stop)
    server_view = sampler.summary() if sampler is not None else ServerView(False, "not sampled")
    from batchwire.loadtest.report import RunInfo, write_report

    info = RunInfo(
        target=target,
        models=models,
        mode=options.mode,
        users=options.users,
        spawn_rate=options.spawn_rate,
        duration_s=plan_.duration_s,
        warmup_s=window_start - start,
        workers=options.workers,
        slo_source=plan_.spec.source,
        server=origin,
        command=shlex.join(sys.argv),
        extra={f"workload {model}": workload.description for model, workload in workloads.items()},
    )
    report = write_report(
        out,
        info=info,
        recorder=recorder,
        evaluation=evaluation,
        spec=plan_.spec,
        server=server_view,
        locust_csv_prefix=out / CSV_PREFIX,
    )
    _write_results_json(out / "slo_results.json", evaluation)
    return Outcome(evaluation, report, EXIT_PASS if evaluation.passed else EXIT_SLO_FAILED)


def _write_results_json(path: Path, evaluation: Evaluation) -> None:
    data = {
        "passed": evaluation.passed,
        "window": [evaluation.window_start, evaluation.window_end],
        "checks": [
            {
                "model": c.model,
                "metric": c.metric,
                "target": c.target,
                "measured": c.measured,
                "passed": c.passed,
                "unit": c.unit,
                "line": c.line(),
            }
            for r in evaluation.results
            for c in r.checks
        ],
        "skipped": evaluation.skipped,
    }
    path.write_text(json.dumps(data, indent=2))
