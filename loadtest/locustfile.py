"""Locust file for batchwire: ``locust -f <this file> --host 127.0.0.1:8001``.

``batchwire loadtest`` runs it headless (standalone, or as master plus
workers); it also works on its own with Locust's web UI. Custom arguments
(also settable from the environment):

--batchwire-models   BATCHWIRE_LOADTEST_MODELS  models to load, "mlp,text" or "mlp:3,text:1"
--batchwire-mode     BATCHWIRE_LOADTEST_MODE    unary (ModelInfer) | stream (ModelStreamInfer)
--batchwire-timeout  BATCHWIRE_LOADTEST_TIMEOUT seconds before a request counts as failed
--batchwire-workloads BATCHWIRE_LOADTEST_WORKLOADS
                     the workloads.json that ``batchwire loadtest`` writes in
                     its --out folder: every model's pre-encoded requests
                     (without it: hand-made requests for the examples, random
                     ones from the metadata for any other model)
--batchwire-latency-file BATCHWIRE_LOADTEST_LATENCY_FILE
                     where the master (or the single process) writes the
                     sub-millisecond latency histograms (see latency.py)

The host must be loopback (127.0.0.0/8, ::1, localhost); the run stops
before any request otherwise.
"""

from __future__ import annotations

import csv
import logging
import time
from typing import Any

import gevent
from locust import events
from locust.runners import MasterRunner, WorkerRunner

from batchwire.loadtest.grpc_user import MODES, BatchwireUser, load_workloads, status_of
from batchwire.loadtest.hosts import NotLoopbackError, normalize_target
from batchwire.loadtest.latency import LatencyRecorder
from batchwire.loadtest.workloads import parse_weighted_models

log = logging.getLogger("batchwire.loadtest")

#: Key of our data in Locust's worker -> master reports.
REPORT_KEY = "batchwire_latency"

recorder = LatencyRecorder()


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("batchwire")
    group.add_argument(
        "--batchwire-models",
        type=str,
        env_var="BATCHWIRE_LOADTEST_MODELS",
        default="mlp,text",
        help="Models to load, comma separated, optional weights: mlp:3,text:1",
    )
    group.add_argument(
        "--batchwire-workloads",
        type=str,
        env_var="BATCHWIRE_LOADTEST_WORKLOADS",
        default="",
        help="workloads.json written by batchwire loadtest (the requests to send)",
    )
    group.add_argument(
        "--batchwire-mode",
        type=str,
        env_var="BATCHWIRE_LOADTEST_MODE",
        choices=list(MODES),
        default="unary",
        help="unary: one ModelInfer per request; stream: requests on a ModelStreamInfer stream",
    )
    group.add_argument(
        "--batchwire-timeout",
        type=float,
        env_var="BATCHWIRE_LOADTEST_TIMEOUT",
        default=10.0,
        help="Seconds before a request counts as failed (DEADLINE_EXCEEDED)",
    )
    group.add_argument(
        "--batchwire-latency-file",
        type=str,
        env_var="BATCHWIRE_LOADTEST_LATENCY_FILE",
        default="",
        help="Write sub-millisecond latency histograms (JSON) here when the run ends",
    )


@events.init.add_listener
def _check_options(environment: Any, **_: Any) -> None:
    options = environment.parsed_options
    if options is None or isinstance(environment.runner, WorkerRunner):
        return  # workers get the master's options with their first spawn message
    try:
        models = parse_weighted_models(options.batchwire_models)
        normalize_target(environment.host or "127.0.0.1:8001")
        if options.batchwire_workloads:
            pools = load_workloads(options.batchwire_workloads)
            missing = [model for model in models if model not in pools]
            if missing:
                raise ValueError(
                    f"model(s) {', '.join(missing)} not in {options.batchwire_workloads} "
                    f"(it has {', '.join(pools) or 'none'})"
                )
    except (NotLoopbackError, ValueError) as exc:
        log.error("%s", exc)
        raise SystemExit(2) from exc


@events.request.add_listener
def _record(
    request_type: str,
    name: str,
    response_time: float,
    response_length: int,
    exception: BaseException | None = None,
    **_: Any,
) -> None:
    recorder.record(
        name,
        response_time,
        at=time.time(),
        status=status_of(exception),
        response_bytes=response_length or 0,
    )


@events.report_to_master.add_listener
def _send_delta(client_id: str, data: dict[str, Any]) -> None:
    global recorder
    if recorder.empty() and recorder.start_time is None:
        return
    data[REPORT_KEY] = recorder.to_json()
    recorder = LatencyRecorder()


@events.worker_report.add_listener
def _merge_delta(client_id: str, data: dict[str, Any]) -> None:
    delta = data.get(REPORT_KEY)
    if delta:
        # Worker start/stop times do not define the run: the master's do.
        recorder.merge_json({**delta, "start_time": None, "stop_time": None})


def _sample_users(environment: Any) -> None:
    while True:
        runner = environment.runner
        if runner is not None:
            recorder.users[int(time.time())] = runner.user_count
        gevent.sleep(1.0 - time.time() % 1.0 + 0.001)


_sampler: gevent.Greenlet | None = None


@events.test_start.add_listener
def _on_test_start(environment: Any, **_: Any) -> None:
    global _sampler
    if isinstance(environment.runner, WorkerRunner):
        recorder.start_time = recorder.start_time or time.time()
        return
    # A new test (the web UI can run several): start from empty histograms.
    recorder.seconds.clear()
    recorder.users.clear()
    recorder.start_time = time.time()
    recorder.stop_time = None
    if _sampler is None:
        _sampler = gevent.spawn(_sample_users, environment)


@events.test_stop.add_listener
def _on_test_stop(environment: Any, **_: Any) -> None:
    if not isinstance(environment.runner, WorkerRunner):
        recorder.stop_time = time.time()


@events.quitting.add_listener
def _write_latency_file(environment: Any, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    path = getattr(environment.parsed_options, "batchwire_latency_file", "")
    if not path:
        return
    if recorder.stop_time is None:
        recorder.stop_time = time.time()
    recorder.write(path)
    kind = "master" if isinstance(environment.runner, MasterRunner) else "local"
    log.info("batchwire latency histograms (%s) written to %s", kind, path)


@events.quitting.add_listener
def _write_final_locust_csv(environment: Any, **_: Any) -> None:
    """Locust rewrites its ``--csv`` stats once a second but not at exit, so the
    files can miss the last second; write the final totals (they no longer change)."""
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if not prefix or isinstance(environment.runner, WorkerRunner):
        return
    from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for suffix, write in (
        ("_stats.csv", writer.requests_csv),
        ("_failures.csv", writer.failures_csv),
    ):
        with open(f"{prefix}{suffix}", "w", newline="") as handle:
            write(csv.writer(handle))


class ExampleModelsUser(BatchwireUser):
    """Loads the models chosen by ``--batchwire-models`` (unary or stream).

    (The name is historical: any served model can be loaded.)
    """
