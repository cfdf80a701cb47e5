"""ModelStatistics (Triton's format, through tritonclient), failures by reason, metadata."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as triton

from batchwire.clients import InferenceClient
from batchwire.clients.errors import InferenceServerError


@pytest.fixture()
def tclient(telemetry_server):
    client = triton.InferenceServerClient(telemetry_server.address)
    yield client
    client.close()


def _stats(tclient, model: str) -> dict:
    (row,) = tclient.get_inference_statistics(model, as_json=True)["model_stats"]
    return row


def _count(row: dict, *path: str) -> int:
    for key in path:
        row = row.get(key, {})
    return int(row or 0)


def test_server_metadata_advertises_the_implemented_extensions(tclient) -> None:
    extensions = set(tclient.get_server_metadata().extensions)
    assert {"statistics", "trace", "logging"} <= extensions


def test_statistics_after_concurrent_requests(telemetry_server, tclient) -> None:
    before = _stats(tclient, "mlp")
    n, items = 24, 2
    started_ms = time.time() * 1000
    x = np.random.default_rng(0).standard_normal((items, 64), dtype=np.float32)

    def one(_: int) -> None:
        with InferenceClient(telemetry_server.address) as client:
            client.infer("mlp", {"INPUT__0": x})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))
    after = _stats(tclient, "mlp")

    def delta(*path: str) -> int:
        return _count(after, *path) - _count(before, *path)

    assert (after["name"], after["version"]) == ("mlp", "1")
    assert delta("inference_stats", "success", "count") == n
    assert delta("inference_stats", "fail", "count") == 0
    assert delta("inference_count") == n * items
    executions = delta("execution_count")
    assert 1 <= executions <= n
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert delta("inference_stats", phase, "count") == n
        assert delta("inference_stats", phase, "ns") >= 0
    assert delta("inference_stats", "compute_infer", "ns") > 0
    success_ns = delta("inference_stats", "success", "ns")
    assert success_ns >= delta("inference_stats", "queue", "ns")
    assert int(after["last_inference"]) >= started_ms - 1000
    # batch_stats: per batch size, the executions add up to execution_count and the
    # sizes times executions to inference_count.
    rows = {int(b["batch_size"]): b for b in after["batch_stats"]}
    old = {int(b["batch_size"]): b for b in before.get("batch_stats", [])}

    def runs(table: dict, size: int) -> int:
        return _count(table.get(size, {}), "compute_infer", "count")

    assert sum(runs(rows, s) - runs(old, s) for s in rows) == executions
    assert sum(s * (runs(rows, s) - runs(old, s)) for s in rows) == n * items
    assert all(s % items == 0 for s in rows if runs(rows, s) > runs(old, s))


def test_all_models_unknown_model_and_version(tclient) -> None:
    every = tclient.get_inference_statistics(as_json=True)["model_stats"]
    assert {row["name"] for row in every} == {"mlp", "mlp_window", "text", "failing", "slow"}
    with pytest.raises(triton.InferenceServerException) as info:
        tclient.get_inference_statistics("no-such-model")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(triton.InferenceServerException) as info:
        tclient.get_inference_statistics("mlp", "7")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    (row,) = tclient.get_inference_statistics("mlp", "1", as_json=True)["model_stats"]
    assert row["version"] == "1"


def test_failures_are_counted_by_reason(telemetry_server, tclient) -> None:
    from batchwire.telemetry.stats import triton_reason

    before = _stats(tclient, "failing")
    with InferenceClient(telemetry_server.address) as client:
        for _ in range(3):
            with pytest.raises(InferenceServerError):
                client.infer("failing", {"X": np.array([[-1.0]], np.float32)})
        client.infer("failing", {"X": np.array([[1.0]], np.float32)})
        with pytest.raises(InferenceServerError):  # wrong shape: fails validation
            client.infer("failing", {"X": np.zeros((1, 3), np.float32)})
    after = _stats(tclient, "failing")
    assert (
        _count(after, "inference_stats", "fail", "count")
        - _count(before, "inference_stats", "fail", "count")
        == 4
    )
    assert (
        _count(after, "inference_stats", "success", "count")
        - _count(before, "inference_stats", "success", "count")
        == 1
    )
    stats = telemetry_server.server.telemetry.stats("failing", "1")
    assert stats.failures["backend"] >= 3
    assert stats.failures["invalid_argument"] >= 1
    assert triton_reason("backend") == "BACKEND"
    assert triton_reason("invalid_argument") == "OTHER"


def test_queue_full_requests_are_rejected_and_counted(telemetry_server, tclient) -> None:
    before = telemetry_server.server.telemetry.stats("slow", "1").failures.get("rejected", 0)
    clients = [InferenceClient(telemetry_server.address) for _ in range(5)]
    for client in clients:
        assert client.server_live()  # connected before the burst
    barrier = threading.Barrier(len(clients))

    def one(client: InferenceClient) -> str:
        barrier.wait()
        try:
            client.infer("slow", {"X": np.ones((1, 1), np.float32)})
        except InferenceServerError as exc:
            return exc.status_code.name
        return "OK"

    try:
        with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
            outcomes = list(pool.map(one, clients))
    finally:
        for client in clients:
            client.close()
    rejected = outcomes.count("UNAVAILABLE")
    assert rejected >= 1, outcomes
    after = telemetry_server.server.telemetry.stats("slow", "1").failures.get("rejected", 0)
    assert after - before == rejected
