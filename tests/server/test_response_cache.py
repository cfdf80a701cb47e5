"""Triton's response cache and batchwire's request coalescing, through a real server.

Python-backend models on a loopback server driven by tritonclient (sync and aio). The
coalescing models hold every execution at a gate (a file the test creates) and log each
execution's first input value, so that "how many times did the model run" is counted,
and requests are known to be in flight together (the data plane's count of calls in
flight) before the gate opens: nothing depends on timing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
import tritonclient.utils.shared_memory as shm
from testsupport import free_port, start_server, wait_until, write_python_model
from tritonclient.utils import InferenceServerException
from typer.testing import CliRunner

from batchwire.core.types import InferenceRequest
from batchwire.server.cli import app
from batchwire.server.repository.params import KNOWN_KEYS
from batchwire.server.response_cache import (
    ENTRY_OVERHEAD_BYTES,
    CacheConfigError,
    ResponseCache,
    freeze_outputs,
    parse_cache_config,
    request_key,
)
from batchwire.server.response_cache_stage import ResponseCaching
from batchwire.server.settings import ServerSettings

CACHE_ON = "response_cache { enable: true }"

DOUBLING_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 8
input {{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] }}
output {{ name: "Y" data_type: TYPE_FP32 dims: [ -1 ] }}
output {{ name: "Z" data_type: TYPE_FP32 dims: [ -1 ] }}
{extra}
"""

DOUBLING_SOURCE = """
class BatchwireModel:
    def load(self, spec, device, instance_index):
        pass

    def execute(self, inputs):
        x = inputs["X"]
        return {"Y": x * 2, "Z": x + 1}
"""

# No batching (each request one execution), one instance, never inline on the loop.
GATED_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input {{ name: "X" data_type: TYPE_FP32 dims: [ 4 ] }}
output {{ name: "Y" data_type: TYPE_FP32 dims: [ 4 ] }}
instance_group {{ count: 1 kind: KIND_CPU }}
parameters {{ key: "batchwire.inline_below_us" value {{ string_value: "0" }} }}
{extra}
"""

GATED_SOURCE = '''
import os
import time

LOG = {log!r}
GATE = {gate!r}


class BatchwireModel:
    """Logs X[0], waits for the gate file (at most 30 s), fails for negative X."""

    def load(self, spec, device, instance_index):
        pass

    def execute(self, inputs):
        x = inputs["X"]
        with open(LOG, "a") as log:
            log.write(f"{{float(x.reshape(-1)[0])}}\\n")
        give_up = time.monotonic() + 30
        while not os.path.exists(GATE) and time.monotonic() < give_up:
            time.sleep(0.002)
        if bool((x < 0).any()):
            raise ValueError("negative input is not allowed")
        return {{"Y": x * 2}}
'''


class Gate:
    """The gated models' gate file and execution log."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "gate"
        self.log = folder / "executions.log"
        self.log.touch()

    def close(self) -> None:
        self.path.unlink(missing_ok=True)

    def open(self) -> None:
        self.path.touch()

    def runs(self, value: float) -> int:
        """Executions whose first input element was ``value``."""
        return self.log.read_text().split().count(str(float(value)))


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Gate:
    gate = Gate(tmp_path_factory.mktemp("gate"))
    gate.open()
    return gate


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, gate: Gate) -> Path:
    root = tmp_path_factory.mktemp("cache-repo")
    source = GATED_SOURCE.format(log=str(gate.log), gate=str(gate.path))
    for name, extra in (("cached", CACHE_ON), ("plain", "")):
        write_python_model(
            root, name, DOUBLING_CONFIG.format(name=name, extra=extra), DOUBLING_SOURCE
        )
    for name, extra in (("gated", CACHE_ON), ("gated_plain", "")):
        write_python_model(root, name, GATED_CONFIG.format(name=name, extra=extra), source)
    return root


@pytest.fixture(scope="module")
def server(repository: Path):
    server = start_server(
        repository,
        metrics_port=free_port(),
        cache_config=("local,size=1048576",),
        allow_client_shm=True,
        model_control_mode="explicit",
        load_models=("*",),
    )
    yield server
    server.stop()


@pytest.fixture()
def client(server) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.address)
    yield client
    client.close()


@pytest.fixture()
def closed_gate(gate: Gate) -> Iterator[Gate]:
    gate.close()
    yield gate
    gate.open()  # whatever happened, nothing stays held


def x_input(values) -> triton.InferInput:
    array = np.asarray(values, dtype=np.float32)
    tensor = triton.InferInput("X", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def stats(client: triton.InferenceServerClient, model: str):
    return client.get_inference_statistics(model).model_stats[0]


def metric(server, name: str, model: str) -> float | None:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    found = re.search(rf'^{name}{{model="{model}",version="1"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else None


def in_flight(server) -> int:
    return server.server.dataplane.in_flight


async def until(condition, what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` on the test's loop; fail naming ``what`` after ``timeout`` s."""
    give_up = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > give_up:
            pytest.fail(f"gave up waiting for {what} after {timeout:g} s")
        await asyncio.sleep(0.01)


# -- the cache ---------------------------------------------------------------------------


def test_a_repeated_request_is_answered_from_the_cache_and_counted_as_triton(
    server, client
) -> None:
    before = stats(client, "cached")
    x = [[1.5, 2.5, 3.5]]
    first = client.infer("cached", [x_input(x)], request_id="first")
    second = client.infer("cached", [x_input(x)], request_id="second")
    after = stats(client, "cached")

    np.testing.assert_array_equal(second.as_numpy("Y"), first.as_numpy("Y"))
    np.testing.assert_array_equal(second.as_numpy("Z"), np.asarray(x, np.float32) + 1)
    assert second.get_response().id == "second"  # the caller's id, not the cached one's
    hits = after.inference_stats.cache_hit.count - before.inference_stats.cache_hit.count
    misses = after.inference_stats.cache_miss.count - before.inference_stats.cache_miss.count
    assert (hits, misses) == (1, 1)
    assert after.inference_stats.cache_hit.ns > before.inference_stats.cache_hit.ns
    assert after.execution_count - before.execution_count == 1
    assert after.inference_stats.success.count - before.inference_stats.success.count == 2
    assert metric(server, "nv_cache_num_hits_per_model", "cached") == (
        after.inference_stats.cache_hit.count
    )
    assert metric(server, "nv_cache_num_misses_per_model", "cached") == (
        after.inference_stats.cache_miss.count
    )
    assert metric(server, "nv_cache_hit_duration_per_model", "cached") is not None
    assert metric(server, "nv_cache_miss_duration_per_model", "cached") is not None
    assert metric(server, "batchwire_response_cache_entries", "cached") >= 1


@pytest.mark.parametrize(
    ("change", "inputs", "outputs"),
    [
        ("values", [[1.0, 2.0, 3.0, 4.5]], None),
        ("shape", [[1.0, 2.0, 3.0, 4.0, 0.0]], None),
        ("batch", [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]], None),
        ("requested outputs", [[1.0, 2.0, 3.0, 4.0]], ["Y"]),
        ("their order", [[1.0, 2.0, 3.0, 4.0]], ["Z", "Y"]),
    ],
)
def test_a_request_that_differs_misses(client, change, inputs, outputs) -> None:
    base = [[1.0, 2.0, 3.0, 4.0]]  # all outputs, in config order
    client.infer("cached", [x_input(base)])
    before = stats(client, "cached").inference_stats
    client.infer("cached", [x_input(base)])  # the same again: a hit
    middle = stats(client, "cached").inference_stats
    assert middle.cache_hit.count - before.cache_hit.count == 1
    requested = [triton.InferRequestedOutput(name) for name in outputs] if outputs else None
    reply = client.infer("cached", [x_input(inputs)], outputs=requested)
    after = stats(client, "cached").inference_stats
    before = middle
    assert after.cache_miss.count - before.cache_miss.count == 1, change
    assert after.cache_hit.count == before.cache_hit.count, change
    names = [out.name for out in reply.get_response().outputs]
    assert names == (outputs or ["Y", "Z"])
    np.testing.assert_array_equal(reply.as_numpy("Y"), np.asarray(inputs, np.float32) * 2)


def test_the_key_covers_every_field_that_can_change_a_result() -> None:
    x = np.arange(6, dtype=np.float32).reshape(1, 6)

    def key(model="m", version="1", inputs=None, datatypes=None, outputs=()):
        request = InferenceRequest(inputs or {"X": x}, requested_outputs=outputs, id="ignored")
        return request_key(model, version, request, datatypes or {"X": "FP32"})

    base = key()
    assert key() == base
    same_bytes_int = {"X": x.view(np.int32)}
    assert key(inputs=same_bytes_int, datatypes={"X": "INT32"}) != base  # datatype
    assert key(inputs={"X": x.reshape(2, 3)}) != base  # shape
    assert key(model="m2") != base
    assert key(version="2") != base
    assert key(outputs=("Y",)) != base
    assert key(inputs={"Y": x}, datatypes={"Y": "FP32"}) != base  # name
    # Framing: a name's end cannot move into the next field.
    assert key(model="m1", version="") != key(model="m", version="11")
    # The request id is never part of it; input order in the message is not either.
    other = InferenceRequest({"X": x}, id="another")
    assert request_key("m", "1", other, {"X": "FP32"}) == base
    a, b = np.zeros((1, 2), np.float32), np.ones((1, 2), np.float32)
    ab = InferenceRequest({"A": a, "B": b})
    ba = InferenceRequest({"B": b, "A": a})
    types = {"A": "FP32", "B": "FP32"}
    assert request_key("m", "1", ab, types) == request_key("m", "1", ba, types)
    strings = np.array([[b"ab", b"c"]], dtype=np.object_)
    split = np.array([[b"a", b"bc"]], dtype=np.object_)
    assert key(inputs={"X": strings}, datatypes={"X": "BYTES"}) != key(
        inputs={"X": split}, datatypes={"X": "BYTES"}
    )


def test_the_cache_evicts_the_least_recently_used_entry_at_its_size(repository: Path) -> None:
    # One entry: Y and Z of 64 FP32 (512 bytes) plus the overhead; room for two.
    entry = 2 * 64 * 4 + ENTRY_OVERHEAD_BYTES
    server = start_server(
        repository, metrics_port=free_port(), cache_config=(f"local,size={2 * entry + 100}",)
    )
    try:
        client = triton.InferenceServerClient(server.address)
        a, b, c = ([[float(v)] * 64] for v in (1, 2, 3))

        def hit(x) -> bool:
            before = stats(client, "cached").inference_stats.cache_hit.count
            client.infer("cached", [x_input(x)])
            return stats(client, "cached").inference_stats.cache_hit.count > before

        assert not hit(a) and not hit(b)
        assert hit(a)  # a is now the most recent, b the least
        assert not hit(c)  # evicts b
        assert hit(a) and hit(c)
        assert not hit(b)
        assert metric(server, "batchwire_response_cache_evictions_total", "cached") == 2
        assert metric(server, "batchwire_response_cache_entries", "cached") == 2
        assert metric(server, "batchwire_response_cache_bytes", "cached") == 2 * entry
        client.close()
    finally:
        server.stop()


def test_reloading_or_unloading_a_model_drops_its_entries(server, client) -> None:
    x = [[9.0, 8.0, 7.0]]
    client.infer("cached", [x_input(x)])
    client.infer("plain", [x_input(x)])
    before = stats(client, "cached").inference_stats
    client.load_model("cached")  # a reload
    client.infer("cached", [x_input(x)])
    after = stats(client, "cached").inference_stats
    assert after.cache_miss.count - before.cache_miss.count == 1
    assert after.cache_hit.count == before.cache_hit.count
    assert metric(server, "batchwire_response_cache_entries", "cached") == 1
    client.unload_model("cached")
    wait_until(lambda: not client.is_model_ready("cached"), "the unload")
    assert metric(server, "batchwire_response_cache_entries", "cached") == 0
    client.load_model("cached")
    client.infer("cached", [x_input(x)])
    assert stats(client, "cached").inference_stats.cache_miss.count - after.cache_miss.count == 1


def test_a_model_without_the_flag_is_untouched(server, client) -> None:
    stages = _walk(server.server.dataplane.pipeline.chain("plain"))
    assert not any(isinstance(stage, ResponseCaching) for stage in stages)
    assert any(
        isinstance(stage, ResponseCaching)
        for stage in _walk(server.server.dataplane.pipeline.chain("cached"))
    )
    before = stats(client, "plain")
    x = [[4.0, 4.0]]
    client.infer("plain", [x_input(x)])
    client.infer("plain", [x_input(x)])
    after = stats(client, "plain")
    assert after.execution_count - before.execution_count == 2
    assert (after.inference_stats.cache_hit.count, after.inference_stats.cache_miss.count) == (0, 0)
    assert metric(server, "nv_cache_num_hits_per_model", "plain") is None


def _walk(stage) -> list:
    found = []
    while stage is not None:
        found.append(stage)
        stage = getattr(stage, "next", None)
    return found


def test_a_flagged_model_on_a_server_without_a_cache_runs_every_request(
    repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(repository)
    try:
        client = triton.InferenceServerClient(server.address)
        with caplog.at_level(logging.WARNING, logger="batchwire.server.response_cache_stage"):
            client.infer("cached", [x_input([[1.0]])])
            client.infer("cached", [x_input([[1.0]])])
        model = stats(client, "cached")
        assert model.execution_count == 2
        assert model.inference_stats.cache_hit.count == 0
        assert "the server has no response cache" in caplog.text
        assert not any(
            isinstance(stage, ResponseCaching)
            for stage in _walk(server.server.dataplane.pipeline.chain("cached"))
        )
        client.close()
    finally:
        server.stop()


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm (Linux)")
def test_a_request_through_shared_memory_bypasses_the_cache(client) -> None:
    x = np.full((1, 8), 3.25, dtype=np.float32)
    name = f"bw-cache-{uuid.uuid4().hex[:12]}"
    handle = shm.create_shared_memory_region(name, "/" + name, x.nbytes)
    try:
        shm.set_shared_memory_region(handle, [x])
        client.register_system_shared_memory(name, "/" + name, x.nbytes)
        before = stats(client, "cached")
        for _ in range(2):
            tensor = triton.InferInput("X", [1, 8], "FP32")
            tensor.set_shared_memory(name, x.nbytes)
            reply = client.infer("cached", [tensor])
            np.testing.assert_array_equal(reply.as_numpy("Y"), x * 2)
        after = stats(client, "cached")
        assert after.execution_count - before.execution_count == 2
        assert after.inference_stats.cache_hit.count == before.inference_stats.cache_hit.count
        assert after.inference_stats.cache_miss.count == before.inference_stats.cache_miss.count
    finally:
        client.unregister_system_shared_memory(name)
        shm.destroy_shared_memory_region(handle)


def test_cached_arrays_are_read_only_and_own_their_memory() -> None:
    batch = np.arange(8, dtype=np.float32).reshape(2, 4)
    view = batch[1:]
    frozen = freeze_outputs({"Y": view}, own=True)
    assert not frozen["Y"].flags.writeable and frozen["Y"].flags.owndata
    assert view.flags.writeable  # the batch's own array is left as it was
    shared = freeze_outputs({"Y": view}, own=False)
    assert not shared["Y"].flags.writeable and np.shares_memory(shared["Y"], batch)


def test_an_entry_computed_before_its_model_changed_is_not_stored() -> None:
    cache = ResponseCache(10_000)
    outputs = freeze_outputs({"Y": np.zeros(4, np.float32)}, own=True)
    generation = cache.generation("m")
    cache.model_changed("m", True)
    assert not cache.put(b"k" * 32, "m", generation, outputs)
    assert cache.put(b"k" * 32, "m", cache.generation("m"), outputs)
    assert cache.get(b"k" * 32) is outputs
    # An entry larger than the whole cache is not stored.
    big = freeze_outputs({"Y": np.zeros(4000, np.float32)}, own=True)
    assert not cache.put(b"b" * 32, "m", cache.generation("m"), big)
    assert len(cache) == 1


# -- coalescing --------------------------------------------------------------------------


def test_identical_requests_in_flight_together_run_once(server, closed_gate: Gate) -> None:
    async def main() -> list:
        client = triton_aio.InferenceServerClient(server.address)
        try:
            calls = [
                asyncio.ensure_future(client.infer("gated", [x_input([1.0, 2.0, 3.0, 4.0])]))
                for _ in range(20)
            ]
            await until(lambda: in_flight(server) >= 20, "20 requests in flight")
            closed_gate.open()
            return await asyncio.gather(*calls)
        finally:
            await client.close()

    sync = triton.InferenceServerClient(server.address)
    before = stats(sync, "gated")
    coalesced = metric(server, "batchwire_coalesced_requests_total", "gated") or 0
    replies = asyncio.run(main())
    after = stats(sync, "gated")
    assert closed_gate.runs(1.0) == 1
    for reply in replies:
        np.testing.assert_array_equal(reply.as_numpy("Y"), [2.0, 4.0, 6.0, 8.0])
    assert after.inference_stats.success.count - before.inference_stats.success.count == 20
    assert after.execution_count - before.execution_count == 1
    assert metric(server, "batchwire_coalesced_requests_total", "gated") - coalesced == 19
    sync.close()


def test_without_the_flag_identical_requests_each_run(server, closed_gate: Gate) -> None:
    async def main() -> list:
        client = triton_aio.InferenceServerClient(server.address)
        try:
            calls = [
                asyncio.ensure_future(client.infer("gated_plain", [x_input([5.0, 0, 0, 0])]))
                for _ in range(5)
            ]
            await until(lambda: in_flight(server) >= 5, "5 requests in flight")
            closed_gate.open()
            return await asyncio.gather(*calls)
        finally:
            await client.close()

    assert len(asyncio.run(main())) == 5
    assert closed_gate.runs(5.0) == 5


def test_a_cancelled_leader_neither_cancels_nor_fails_its_followers(
    server, closed_gate: Gate
) -> None:
    async def main() -> list:
        client = triton_aio.InferenceServerClient(server.address)
        try:
            leader = asyncio.ensure_future(client.infer("gated", [x_input([6.0, 1, 1, 1])]))
            await until(lambda: closed_gate.runs(6.0) >= 1, "the leader's run has started")
            # Bounded: a follower wrongly cancelled on the server may never be answered.
            followers = [
                asyncio.ensure_future(
                    client.infer("gated", [x_input([6.0, 1, 1, 1])], client_timeout=60)
                )
                for _ in range(4)
            ]
            await until(lambda: in_flight(server) >= 5, "5 requests in flight")
            leader.cancel()
            await asyncio.wait([leader], timeout=30)
            assert leader.cancelled()
            await until(lambda: in_flight(server) <= 4, "the server saw the cancellation")
            closed_gate.open()
            return await asyncio.gather(*followers)
        finally:
            await client.close()

    replies = asyncio.run(main())
    assert len(replies) == 4
    for reply in replies:
        np.testing.assert_array_equal(reply.as_numpy("Y"), [12.0, 2.0, 2.0, 2.0])
    # The leader's own run (its result dropped with its caller), and one run for the four
    # followers: the leader runs without a task of its own, so its run cannot outlive it.
    assert closed_gate.runs(6.0) == 2


def test_a_failing_leader_fails_every_follower_and_nothing_is_stored(
    server, closed_gate: Gate
) -> None:
    sync = triton.InferenceServerClient(server.address)
    before = stats(sync, "gated").inference_stats.fail.count

    async def main() -> list:
        client = triton_aio.InferenceServerClient(server.address)
        try:
            calls = [
                asyncio.ensure_future(client.infer("gated", [x_input([-3.0, 0, 0, 0])]))
                for _ in range(5)
            ]
            await until(lambda: in_flight(server) >= 5, "5 requests in flight")
            closed_gate.open()
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.close()

    outcomes = asyncio.run(main())
    assert closed_gate.runs(-3.0) == 1
    for outcome in outcomes:
        assert isinstance(outcome, InferenceServerException), outcome
        assert outcome.status() == "StatusCode.INTERNAL"
        assert "negative input is not allowed" in outcome.message()
    assert stats(sync, "gated").inference_stats.fail.count - before == 5
    # Failures are not cached: the same request runs again.
    with pytest.raises(InferenceServerException):
        sync.infer("gated", [x_input([-3.0, 0, 0, 0])])
    assert closed_gate.runs(-3.0) == 2
    sync.close()


def test_a_leader_past_its_deadline_does_not_fail_its_followers(server, closed_gate: Gate) -> None:
    async def main() -> tuple:
        client = triton_aio.InferenceServerClient(server.address)
        try:
            # Holds the model's only instance, so that the leader waits in the queue.
            blocker = asyncio.ensure_future(client.infer("gated", [x_input([7.0, 0, 0, 0])]))
            await until(lambda: closed_gate.runs(7.0) >= 1, "the blocker's run")
            leader = asyncio.ensure_future(
                client.infer("gated", [x_input([8.0, 0, 0, 0])], client_timeout=0.5)
            )
            await until(lambda: in_flight(server) >= 2, "2 requests in flight")
            followers = [
                asyncio.ensure_future(client.infer("gated", [x_input([8.0, 0, 0, 0])]))
                for _ in range(3)
            ]
            await until(lambda: in_flight(server) >= 5, "5 requests in flight")
            failed = await asyncio.gather(leader, return_exceptions=True)
            closed_gate.open()
            return failed[0], await asyncio.gather(blocker, *followers)
        finally:
            await client.close()

    failed, replies = asyncio.run(main())
    assert isinstance(failed, InferenceServerException)
    assert failed.status() == "StatusCode.DEADLINE_EXCEEDED"
    for reply in replies[1:]:
        np.testing.assert_array_equal(reply.as_numpy("Y"), [16.0, 0, 0, 0])
    assert closed_gate.runs(8.0) == 1


needs_coalesce_key = pytest.mark.skipif(
    "batchwire.coalesce" not in KNOWN_KEYS,
    reason="server/repository/params.py does not accept batchwire.coalesce yet",
)


@needs_coalesce_key
def test_batchwire_coalesce_turns_coalescing_on_and_off(tmp_path: Path, closed_gate: Gate) -> None:
    source = GATED_SOURCE.format(log=str(closed_gate.log), gate=str(closed_gate.path))
    flag = 'parameters {{ key: "batchwire.coalesce" value {{ string_value: "{}" }} }}'
    for name, extra in (
        ("coalesce_only", flag.format("true")),
        ("cache_only", CACHE_ON + "\n" + flag.format("false")),
    ):
        write_python_model(tmp_path, name, GATED_CONFIG.format(name=name, extra=extra), source)
    server = start_server(tmp_path, cache_config=("local,size=100000",))

    async def burst(model: str, value: float) -> None:
        client = triton_aio.InferenceServerClient(server.address)
        try:
            calls = [
                asyncio.ensure_future(client.infer(model, [x_input([value, 0, 0, 0])]))
                for _ in range(4)
            ]
            await until(lambda: in_flight(server) >= 4, "4 requests in flight")
            closed_gate.open()
            await asyncio.gather(*calls)
        finally:
            closed_gate.close()
            await client.close()

    try:
        asyncio.run(burst("coalesce_only", 11.0))
        assert closed_gate.runs(11.0) == 1
        asyncio.run(burst("cache_only", 12.0))
        assert closed_gate.runs(12.0) == 4
    finally:
        closed_gate.open()
        server.stop()


# -- --cache-config ----------------------------------------------------------------------


def test_cache_config_takes_tritons_local_size() -> None:
    assert parse_cache_config(["local,size=1048576"]).size == 1048576
    assert parse_cache_config(["local,size=10", "local,size=20"]).size == 20
    assert parse_cache_config([]) is None
    assert ServerSettings(cache_config=("local,size=4096",)).cache_config == ("local,size=4096",)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "local",
            "No cache specified. --cache-config option format is <cache name>,<setting>=<value>."
            " Got local",
        ),
        (
            ",size=5",
            "No cache specified. --cache-config option format is <cache name>,<setting>=<value>."
            " Got ,size=5",
        ),
        (
            "local,size",
            "--cache-config option format is '<cache name>,<setting>=<value>'. Got local,size",
        ),
        (
            "local,size=",
            "--cache-config option format is '<cache name>,<setting>=<value>'. Got local,size=",
        ),
        ("redis,host=localhost", "batchwire has the 'local' cache only, got 'redis'"),
        ("local,capacity=5", "the 'local' cache has one setting, size, got 'capacity'"),
        ("local,size=0", "local,size expects a size in bytes of 1 or more, got '0'"),
        ("local,size=1MB", "local,size expects a size in bytes of 1 or more, got '1MB'"),
    ],
)
def test_a_bad_cache_config_is_refused_with_tritons_words(value: str, message: str) -> None:
    with pytest.raises(CacheConfigError) as caught:
        parse_cache_config([value])
    assert message in str(caught.value)
    with pytest.raises(ValueError, match=re.escape(message)):
        ServerSettings(cache_config=(value,))
    result = CliRunner().invoke(app, ["serve", "--cache-config", value])
    assert result.exit_code == 2, result.output
    assert "--cache-config" in result.output
    assert message in " ".join(result.output.split()), result.output


def test_the_cost_benchmark_writes_its_figures(tmp_path: Path) -> None:
    from batchwire.bench.response_cache_cost import run

    result = run(200, tmp_path)
    written = (tmp_path / "response_cache_cost.json").read_text()
    assert '"hit"' in written and '"coalesce_miss"' in written
    for figures in result["sizes"].values():
        assert set(figures) == {"key", "hit", "miss", "coalesce_miss"}
        assert all(row["us"] > 0 for row in figures.values())
