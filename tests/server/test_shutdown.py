"""Graceful shutdown of a ``batchwire serve`` process, as Kubernetes drives it (SIGTERM).

Each test starts a real server process (:class:`~batchwire.serve_process.ServerProcess`)
on a repository of python models that write one line per batch into a log file (its
batch size) before sleeping: the test reads that file to know which requests are
running on a model instance, hence accepted, before it sends SIGTERM.

What every test checks: each call ends exactly once, OK or UNAVAILABLE (never CANCELLED,
never hanging: every wait is bounded), and the process exits with status 0.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from testsupport import wait_until, write_python_model

from batchwire.clients import AsyncInferenceClient, InferenceServerError
from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc
from batchwire.protos import health_pb2, health_pb2_grpc
from batchwire.serve_process import ServerProcess, log_tail

#: Bound on every wait for the server (calls answered, the process exiting).
BOUND_S = 120.0

SHUTTING_DOWN = "shutting down"


def sleeping_model(root: Path, name: str, seconds: float, instances: int = 2) -> Path:
    """Model ``name``: Y = X after ``seconds`` per batch; logs each batch's size first.

    The log is ``<root>/<name>.batches``, one line per batch started.
    """
    batches = root / f"{name}.batches"
    write_python_model(
        root,
        name,
        f"""
        name: "{name}"
        backend: "python"
        max_batch_size: 8
        input {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }}
        output {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }}
        dynamic_batching {{ }}
        instance_group {{ count: {instances} kind: KIND_CPU }}
        """,
        f"""
        import time


        class BatchwireModel:
            def load(self, spec, device, instance_index):
                pass

            def execute(self, inputs):
                x = inputs["X"]
                with open({str(batches)!r}, "a") as log:
                    log.write(f"{{len(x)}}\\n")
                time.sleep({seconds})
                return {{"Y": x}}
        """,
    )
    return batches


def started(batches: Path) -> int:
    """Requests the model has started running (the sum of the logged batch sizes)."""
    try:
        return sum(int(line) for line in batches.read_text().split())
    except FileNotFoundError:
        return 0


def infer_request(model: str, value: float, request_id: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="X", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.array([[value]], dtype=np.float32).tobytes())
    return request


async def wait_not_serving(channel: grpc.aio.Channel) -> None:
    """Wait (bounded) until the server's health says NOT_SERVING: its shutdown has begun."""
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + BOUND_S
    while (await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)).status != (
        health_pb2.HealthCheckResponse.NOT_SERVING
    ):
        assert time.monotonic() < deadline, "health still SERVING after SIGTERM"
        await asyncio.sleep(0.01)


def start(tmp_path: Path, repository: Path, *args: str) -> ServerProcess:
    return ServerProcess(repository, *args, log_path=tmp_path / "server.log").start()


def exit_status(server: ServerProcess, tmp_path: Path) -> int:
    """Wait (bounded) for the server to exit; its status, with its log on failure."""
    status = server.wait(BOUND_S)
    assert status == 0, f"exit status {status}\n{log_tail(tmp_path / 'server.log', 60)}"
    return status


async def test_sigterm_under_load_every_call_ends_ok_or_unavailable(tmp_path: Path) -> None:
    """The issue's scenario: 400 calls in flight, SIGTERM, 100 more calls after."""
    import tritonclient.grpc.aio as triton_aio
    from tritonclient.utils import InferenceServerException

    repository = tmp_path / "models"
    batches = sleeping_model(repository, "slow", 0.05)
    server = start(tmp_path, repository, "--trace-mode", "always", "--trace-exporter", "console")
    outcomes: collections.Counter[str] = collections.Counter()
    messages: collections.Counter[str] = collections.Counter()
    client = triton_aio.InferenceServerClient(server.address)
    try:

        async def call(value: float) -> None:
            data = triton_aio.InferInput("X", [1, 1], "FP32")
            data.set_data_from_numpy(np.array([[value]], dtype=np.float32))
            try:
                result = await client.infer("slow", [data])
            except InferenceServerException as exc:
                outcomes[str(exc.status())] += 1
                messages[exc.message()] += 1
                return
            assert result.as_numpy("Y").tolist() == [[value]]
            outcomes["OK"] += 1

        first = [asyncio.ensure_future(call(i)) for i in range(400)]
        # SIGTERM once the model runs some of them (accepted requests are in flight).
        while not started(batches):
            await asyncio.sleep(0.01)
        server.send_signal(signal.SIGTERM)
        running_at_signal = started(batches)
        after = [asyncio.ensure_future(call(400 + i)) for i in range(100)]
        done, pending = await asyncio.wait(first + after, timeout=BOUND_S)
        assert not pending, f"{len(pending)} calls still unanswered after {BOUND_S} s"
        for task in done:
            task.result()  # an OK answer with wrong data fails here
    finally:
        await client.close()
        server.stop()
    assert sum(outcomes.values()) == 500
    assert set(outcomes) <= {"OK", "StatusCode.UNAVAILABLE"}, (outcomes, messages)
    # Every request the model was running when the signal came was answered.
    assert outcomes["OK"] >= running_at_signal > 0
    exit_status(server, tmp_path)
    # The span exporter was flushed at exit: one span per answered request at least.
    spans = (tmp_path / "server.log").read_text().count('"name": "ModelInfer"')
    assert spans >= outcomes["OK"]


async def test_shutdown_delay_reports_not_serving_but_keeps_serving(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    sleeping_model(repository, "quick", 0.0, instances=1)
    server = start(tmp_path, repository, "--shutdown-delay-secs", "8", "--exit-timeout-secs", "5")
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            check = health_pb2.HealthCheckRequest
            for service in ("", "inference.GRPCInferenceService", "quick"):
                answer = await health.Check(check(service=service), timeout=10)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
            server.send_signal(signal.SIGTERM)
            await wait_not_serving(channel)
            deadline = time.monotonic() + BOUND_S
            # Within the delay: everything says not serving, and requests are answered.
            for service in ("inference.GRPCInferenceService", "quick"):
                answer = await health.Check(check(service=service), timeout=10)
                assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert not (await stub.ServerReady(pb.ServerReadyRequest(), timeout=10)).ready
            assert not (await stub.ModelReady(pb.ModelReadyRequest(name="quick"), timeout=10)).ready
            response = await stub.ModelInfer(infer_request("quick", 3.0), timeout=10)
            assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == [3.0]
            # After the delay: refused, UNAVAILABLE, saying why.
            while True:
                assert time.monotonic() < deadline, "still served long after the delay"
                try:
                    await stub.ModelInfer(infer_request("quick", 4.0), timeout=10)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    break
                await asyncio.sleep(0.05)
    finally:
        server.stop()
    exit_status(server, tmp_path)


async def test_open_stream_gets_its_answers_then_ends_unavailable(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    batches = sleeping_model(repository, "slow", 2.0)
    server = start(tmp_path, repository, "--exit-timeout-secs", "60")
    sent: asyncio.Queue[pb.ModelInferRequest] = asyncio.Queue()

    async def requests() -> AsyncIterator[pb.ModelInferRequest]:
        while True:  # never half-closes: only the server ends this stream
            yield await sent.get()

    answers: list[pb.ModelStreamInferResponse] = []
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stream = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
                requests(), timeout=BOUND_S
            )
            for i in range(4):
                sent.put_nowait(infer_request("slow", float(i), f"r{i}"))
            await asyncio.to_thread(wait_until, lambda: started(batches) == 4, "4 requests run")
            server.send_signal(signal.SIGTERM)
            # Without a shutdown delay, refusing starts with NOT_SERVING: sent after it,
            # on the open stream, a request is refused in-stream.
            await wait_not_serving(channel)
            sent.put_nowait(infer_request("slow", 9.0, "late"))
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                async for answer in stream:
                    answers.append(answer)
    finally:
        server.stop()
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value
    assert SHUTTING_DOWN in (ended.value.details() or "")
    by_id = {a.infer_response.id: a for a in answers}
    assert sorted(by_id) == ["late", "r0", "r1", "r2", "r3"], answers
    for i in range(4):
        answer = by_id[f"r{i}"]
        assert not answer.error_message
        assert np.frombuffer(answer.infer_response.raw_output_contents[0], np.float32) == [i]
    assert SHUTTING_DOWN in by_id["late"].error_message
    exit_status(server, tmp_path)


async def test_requests_stuck_past_the_exit_timeout_get_unavailable(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    batches = sleeping_model(repository, "stuck", 600.0, instances=1)
    server = start(tmp_path, repository, "--exit-timeout-secs", "0.5")
    errors: list[InferenceServerError] = []
    try:
        async with AsyncInferenceClient(server.address) as client:

            async def call(value: float) -> None:
                with pytest.raises(InferenceServerError) as info:
                    await client.infer("stuck", {"X": np.array([[value]], np.float32)})
                errors.append(info.value)

            # One runs (and hangs) on the only instance; the others wait in its queue.
            calls = [asyncio.ensure_future(call(i)) for i in range(3)]
            await asyncio.to_thread(wait_until, lambda: started(batches) > 0, "a batch runs")
            server.send_signal(signal.SIGTERM)
            done, pending = await asyncio.wait(calls, timeout=BOUND_S)
            assert not pending, "stuck requests left unanswered"
            for task in done:
                task.result()
    finally:
        server.stop()
    assert [e.status_code for e in errors] == [grpc.StatusCode.UNAVAILABLE] * 3, errors
    assert all(SHUTTING_DOWN in str(e) for e in errors), errors
    exit_status(server, tmp_path)


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--exit-timeout-secs", "-1"], {}, "--exit-timeout-secs"),
        (["--shutdown-delay-secs", "soon"], {}, "--shutdown-delay-secs"),
        ([], {"BATCHWIRE_EXIT_TIMEOUT_SECS": "nan"}, "--exit-timeout-secs"),
        ([], {"BATCHWIRE_SHUTDOWN_DELAY_SECS": "-0.5"}, "--shutdown-delay-secs"),
    ],
)
def test_bad_shutdown_options_are_usage_errors(
    args: list[str], env: dict[str, str], named: str
) -> None:
    from typer.testing import CliRunner

    from batchwire.server.cli import app

    result = CliRunner().invoke(app, ["serve", *args], env=env)
    assert result.exit_code == 2, result.output
    assert named in result.output
    assert "expected a number of seconds of 0 or more" in result.output


def test_settings_check_shutdown_times_and_keep_the_old_name() -> None:
    from batchwire.server.settings import ServerSettings

    settings = ServerSettings(exit_timeout_secs=12.5, shutdown_delay_secs=3)
    assert settings.shutdown_grace == 12.5  # the former name, still readable
    assert ServerSettings().exit_timeout_secs == 30.0  # Triton's default
    with pytest.raises(ValueError, match=r"exit_timeout_secs must be .* got -1"):
        ServerSettings(exit_timeout_secs=-1)
    with pytest.raises(ValueError, match=r"shutdown_delay_secs must be .* got inf"):
        ServerSettings(shutdown_delay_secs=float("inf"))
