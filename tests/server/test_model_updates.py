"""Updating models under traffic: RepositoryModelLoad with config and file overrides,
reloads, version policies, and what the index and statistics say meanwhile.

Every server runs on 127.0.0.1 with a free port, in explicit model control mode, and is
driven by tritonclient (``tritonclient.grpc.aio`` for the load, the plain gRPC stubs where
a test needs a parameter type tritonclient does not send). The model computes
``Y = X + version + bump`` (``bump`` a config parameter), so every answer says which
version and which config computed it.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import textwrap
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from test_server_faults import STUCK_CONFIG, STUCK_SOURCE
from testsupport import wait_until, write_python_model

from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc
from batchwire.server.app import ServerThread
from batchwire.server.pipeline import Stage

Stub = pb_grpc.GRPCInferenceServiceStub
#: ``serve(repository, stages=None, **settings)`` (tests/server/conftest.py).
ServeFn = Callable[..., ServerThread]

LIVE_SOURCE = '''
class BatchwireModel:
    """Y = X + version + the config parameter 'bump'."""

    def load(self, spec, device, instance_index):
        self.offset = float(spec.version) + float(spec.parameters.get("bump", "0"))

    def execute(self, inputs):
        return {"Y": inputs["X"] + self.offset}
'''


def live_config(name: str = "live", *, bump: int = 0, policy: str = "") -> str:
    """config.pbtxt text of the live model (``policy``: a version_policy body, or none)."""
    lines = [
        f'name: "{name}"',
        'backend: "python"',
        "max_batch_size: 8",
        'input { name: "X" data_type: TYPE_FP32 dims: [ 1 ] }',
        'output { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }',
        "dynamic_batching { }",
        f'parameters {{ key: "bump" value: {{ string_value: "{bump}" }} }}',
    ]
    if policy:
        lines.append(f"version_policy: {{ {policy} }}")
    return "\n".join(lines) + "\n"


def live_json(name: str = "live", *, bump: int = 0, policy: dict | None = None) -> str:
    """The same config as JSON, for a ``config`` override."""
    config: dict = {
        "name": name,
        "backend": "python",
        "max_batch_size": 8,
        "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [1]}],
        "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [1]}],
        "dynamic_batching": {},
        "parameters": {"bump": {"string_value": str(bump)}},
    }
    if policy is not None:
        config["version_policy"] = policy
    return json.dumps(config)


def make_repository(root: Path, name: str = "live", versions: tuple[int, ...] = (1, 2)) -> Path:
    for version in versions:
        write_python_model(root, name, live_config(name), LIVE_SOURCE, version)
    return root


def override_folders() -> set[Path]:
    """This process's private override folders (the servers run in this process)."""
    return set(Path(tempfile.gettempdir()).glob(f"batchwire-{os.getpid()}-override-*"))


def x_request(x: float, model: str = "live", version: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="X", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.array([[x]], np.float32).tobytes())
    return request


def answer(stub: Stub, model: str = "live", version: str = "") -> tuple[str, float]:
    """(version that answered, Y - X) of one request."""
    response = stub.ModelInfer(x_request(10.0, model, version), timeout=30)
    y = float(np.frombuffer(response.raw_output_contents[0], np.float32)[0])
    return response.model_version, y - 10.0


def index(stub: Stub, ready: bool = False) -> list[tuple[str, str, str, str]]:
    response = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=ready), timeout=10)
    return [(m.name, m.version, m.state, m.reason) for m in response.models]


def load_request(name: str, **parameters: object) -> pb.RepositoryModelLoadRequest:
    """A load request; each parameter's protobuf field follows its Python type."""
    request = pb.RepositoryModelLoadRequest(model_name=name)
    for key, value in parameters.items():
        field = {bool: "bool_param", int: "int64_param", str: "string_param"}.get(
            type(value), "bytes_param"
        )
        setattr(request.parameters[key], field, value)
    return request


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


@pytest.fixture
def channel_to() -> Iterator[Callable[[ServerThread], grpc.Channel]]:
    channels: list[grpc.Channel] = []

    def open_channel(server: ServerThread) -> grpc.Channel:
        channel = grpc.insecure_channel(server.address)
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        channel.close()


# -- reloads under load -----------------------------------------------------------------

UNARY_LOOPS = 8
STREAMS = 2
STREAM_WINDOW = 4  # requests in flight per stream
MAX_PER_LOOP = 3000  # a bound, never reached in a passing run
PROGRESS = 48  # answers to see after each reload: > every request that can be in flight


class Load:
    """Unary loops and streams sending ``live`` requests (latest version) until stopped."""

    def __init__(self, client: triton_aio.InferenceServerClient) -> None:
        self.client = client
        self.stop = asyncio.Event()
        self.sent: list[str] = []
        self.answered: Counter[str] = Counter()
        self.failures: list[str] = []
        #: (version, Y - X) of every answer.
        self.seen: list[tuple[str, float]] = []
        self._progress = asyncio.Event()

    def _inputs(self, x: float) -> list[triton.InferInput]:
        tensor = triton.InferInput("X", [1, 1], "FP32")
        tensor.set_data_from_numpy(np.array([[x]], np.float32))
        return [tensor]

    def _record(self, result: triton.InferResult, x: float) -> None:
        response = result.get_response()
        self.answered[response.id] += 1
        self.seen.append((response.model_version, float(result.as_numpy("Y")[0, 0]) - x))
        self._progress.set()

    async def unary(self, loop: int) -> None:
        for n in range(MAX_PER_LOOP):
            if self.stop.is_set():
                return
            request_id, x = f"u{loop}-{n}", float(loop * 10_000 + n)
            self.sent.append(request_id)
            try:
                result = await self.client.infer(
                    "live", self._inputs(x), request_id=request_id, client_timeout=60
                )
            except triton.InferenceServerException as exc:
                self.failures.append(f"{request_id}: {exc}")
                continue
            self._record(result, x)

    async def stream(self, index: int) -> None:
        window = asyncio.Semaphore(STREAM_WINDOW)
        xs: dict[str, float] = {}

        async def requests() -> AsyncIterator[dict]:
            for n in range(MAX_PER_LOOP):
                await window.acquire()
                if self.stop.is_set():
                    return
                request_id, x = f"s{index}-{n}", float(100_000 + index * 10_000 + n)
                xs[request_id] = x
                self.sent.append(request_id)
                yield {"model_name": "live", "inputs": self._inputs(x), "request_id": request_id}

        responses = self.client.stream_infer(requests(), stream_timeout=120)
        async for result, error in responses:
            window.release()
            if error is not None:
                self.failures.append(f"stream {index}: {error}")
                continue
            self._record(result, xs[result.get_response().id])

    async def progressed(self, count: int = PROGRESS) -> None:
        """Wait until ``count`` more answers came (bounded: the test fails past 60 s)."""
        target = sum(self.answered.values()) + count

        async def wait() -> None:
            while sum(self.answered.values()) < target:
                self._progress.clear()
                if self.failures:
                    return
                await self._progress.wait()

        await asyncio.wait_for(wait(), 60)


async def test_reloads_under_unary_and_streaming_load_lose_no_request(
    tmp_path: Path, serve: ServeFn
) -> None:
    root = make_repository(tmp_path / "models")
    server = serve(root, model_control_mode="explicit", load_models=("*",))
    folders_before = override_folders()
    client = triton_aio.InferenceServerClient(server.address)
    load = Load(client)
    workers = [asyncio.create_task(load.unary(i)) for i in range(UNARY_LOOPS)]
    workers += [asyncio.create_task(load.stream(i)) for i in range(STREAMS)]

    async def latest() -> tuple[str, float]:
        result = await client.infer("live", load._inputs(5.0), client_timeout=30)
        return result.get_response().model_version, float(result.as_numpy("Y")[0, 0]) - 5.0

    async def index_rows() -> list[tuple[str, str, str]]:
        rows = (await client.get_model_repository_index(as_json=True))["models"]
        return [(r["name"], r.get("version", ""), r.get("reason", "")) for r in rows]

    try:
        await load.progressed()
        assert await latest() == ("2", 2.0)

        # 1. A config override that changes what the model computes.
        await client.load_model("live", config=live_json(bump=100))
        assert await latest() == ("2", 102.0)
        config = await client.get_model_config("live", as_json=True)
        assert config["config"]["parameters"]["bump"]["string_value"] == "100"
        await load.progressed()

        # 2. A file override adding version 3 (the override folder holds only what is sent).
        await client.load_model(
            "live", config=live_json(), files={"file:3/model.py": LIVE_SOURCE.encode()}
        )
        assert await latest() == ("3", 3.0)
        folders = override_folders() - folders_before
        assert len(folders) == 1, folders
        await load.progressed()

        # 3. A broken model file: the load fails, saying why; version 3 keeps serving.
        with pytest.raises(triton.InferenceServerException) as err:
            await client.load_model(
                "live", config=live_json(), files={"file:4/model.py": b"def broken(:\n"}
            )
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
        message = err.value.message()
        assert message.startswith("failed to load 'live': model 'live' version 4: "), message
        assert "model.py: importing it failed: SyntaxError" in message
        assert await latest() == ("3", 3.0)
        [(name, version, reason)] = await index_rows()
        assert (name, version) == ("live", "3")
        assert reason.startswith("failed to reload, this version keeps serving: model 'live' ")
        assert override_folders() - folders_before == folders  # the failed one is removed
        await load.progressed()

        # 4. The version policy, through a config override: every version of the repository.
        await client.load_model("live", config=live_json(policy={"all": {}}))
        assert await latest() == ("2", 2.0)
        assert [row[:2] for row in await index_rows()] == [("live", "1"), ("live", "2")]
        assert override_folders() == folders_before  # replaced: removed
        for version in ("1", "2"):
            result = await client.infer("live", load._inputs(1.0), model_version=version)
            assert float(result.as_numpy("Y")[0, 0]) == 1.0 + int(version)
        await load.progressed()

        # 5. The version policy, through an edited config.pbtxt: version 1 only.
        (root / "live" / "config.pbtxt").write_text(live_config(policy="specific { versions: 1 }"))
        await client.load_model("live")
        assert await latest() == ("1", 1.0)
        await load.progressed()
    finally:
        load.stop.set()
        await asyncio.wait_for(asyncio.gather(*workers, return_exceptions=True), 60)
        await client.close()
    for worker in workers:
        assert worker.exception() is None, worker.exception()

    # Every request answered exactly once, and none failed.
    assert load.failures == []
    assert len(set(load.sent)) == len(load.sent)
    assert sorted(load.answered) == sorted(load.sent)
    assert set(load.answered.values()) == {1}
    # Each answer came from a version and config that were being served, and the load
    # itself saw every one of them.
    assert set(load.seen) == {("2", 2.0), ("2", 102.0), ("3", 3.0), ("1", 1.0)}


#: Set by PauseBeforeSubmit when the request with id "pause" waits; it waits for RELEASE.
PAUSED = threading.Event()
RELEASE = threading.Event()


class PauseBeforeSubmit(Stage):
    """Holds the request with id ``pause`` between resolution and submission until RELEASE
    is set (as a stage that awaits something would)."""

    __slots__ = ()

    def __init__(self, plane: object, model: str | None) -> None:
        super().__init__()

    async def __call__(self, call):  # type: ignore[no-untyped-def]
        if call.message.id == "pause":
            PAUSED.set()
            while not RELEASE.is_set():
                await asyncio.sleep(0.005)
        return await self.next(call)


def test_a_request_resolved_before_a_reload_is_answered_after_it(
    tmp_path: Path, serve: ServeFn, channel_to: Callable[[ServerThread], grpc.Channel]
) -> None:
    from batchwire.server.stages import STAGES

    stages = [*STAGES[:-1], PauseBeforeSubmit, STAGES[-1]]  # just before Submit
    root = make_repository(tmp_path / "models")
    server = serve(root, stages, model_control_mode="explicit", load_models=("*",))
    stub = Stub(channel_to(server))
    PAUSED.clear()
    RELEASE.clear()
    try:
        request = x_request(10.0)
        request.id = "pause"
        pending = stub.ModelInfer.future(request, timeout=60)
        assert PAUSED.wait(30)  # resolved to version 2
        stub.RepositoryModelLoad(load_request("live", config=live_json(bump=100)), timeout=60)
    finally:
        RELEASE.set()  # submitted after the reload replaced version 2
    response = pending.result(timeout=30)
    assert response.model_version == "2"


# -- refusals -----------------------------------------------------------------------------


@pytest.fixture
def live_server(tmp_path: Path, serve: ServeFn) -> ServerThread:
    root = make_repository(tmp_path / "models")
    return serve(root, model_control_mode="explicit", load_models=("*",))


def test_every_bad_override_is_refused_in_one_line_and_changes_nothing(
    live_server: ServerThread, channel_to: Callable[[ServerThread], grpc.Channel]
) -> None:
    stub = Stub(channel_to(live_server))
    before = index(stub)
    folders_before = override_folders()
    source = LIVE_SOURCE.encode()
    escape = "it must stay within the model directory"
    names = "every name in the path must be a file or folder name (no '', '.' or '..')"
    not_version = (
        "expected file:<version>/<path> with <version> a version folder (a positive integer "
        "such as 1)"
    )
    accepted = "'config' (string) and 'file:<version>/<path>' (bytes)"
    cases: list[tuple[dict[str, object], str]] = [
        # Not JSON, not an object, not a ModelConfig.
        (
            {"config": "{"},
            "Invalid config override: Failed to load JSON: Expecting property name enclosed "
            "in double quotes: line 1 column 2 (char 1)",
        ),
        (
            {"config": "[1]"},
            "Invalid config override: expected a JSON object (a ModelConfig), got list",
        ),
        (
            {"config": '{"name": "live", "max_batch": 4}'},
            'Invalid config override: Message type "inference.ModelConfig" has no field named '
            '"max_batch" at "ModelConfig".',
        ),
        (
            {"config": '{"max_batch_size": "eight"}'},
            "Invalid config override: Failed to parse max_batch_size field: invalid literal "
            "for int() with base 10: 'eight'.",
        ),
        # A ModelConfig a config.pbtxt could not hold either.
        (
            {"config": live_json().replace('"dims": [1]', '"dims": [0]', 1)},
            "Invalid config override: input 'X': dims [0] has a 0 or < -1 entry (expected > 0, "
            "or -1 for variable)",
        ),
        (
            {"config": live_json(name="other")},
            "Invalid config override: name: 'other' does not match the model folder name "
            "(expected 'live' or unset)",
        ),
        (
            {"config": live_json(policy={"specific": {"versions": [7]}})},
            "Invalid config override: version_policy.specific.versions: version(s) 7 have no "
            "folder (expected one of 1, 2)",
        ),
        # Files: outside the folder, not <version>/<path>, clashing, wrong type, no config.
        (
            {"config": live_json(), "file:../evil.py": source},
            f"Invalid file parameter 'file:../evil.py': {names}; {escape}",
        ),
        (
            {"config": live_json(), "file:1/../../evil.py": source},
            f"Invalid file parameter 'file:1/../../evil.py': {names}; {escape}",
        ),
        (
            {"config": live_json(), "file:/etc/evil.py": source},
            f"Invalid file parameter 'file:/etc/evil.py': the path is absolute; {escape}",
        ),
        (
            {"config": live_json(), "file:model.py": source},
            f"Invalid file parameter 'file:model.py': {not_version}; {escape}",
        ),
        (
            {"config": live_json(), "file:01/model.py": source},
            f"Invalid file parameter 'file:01/model.py': {not_version}; {escape}",
        ),
        (
            {"config": live_json(), "file:1\\model.py": source},
            f"Invalid file parameter 'file:1\\model.py': the path contains a backslash "
            f"(use '/'); {escape}",
        ),
        (
            {"config": live_json(), "file:1/model.py": source, "file:1/model.py/x": source},
            "Invalid file parameter 'file:1/model.py/x', directory has been created as a file "
            "('file:1/model.py')",
        ),
        (
            {"config": live_json(), "file:1/other.py": source},
            "model file not found (expected model.py in version 1, per default_model_filename "
            "in config override)",
        ),
        (
            {"file:1/model.py": source},
            "Load parameter 'config' must be specified for model file override",
        ),
        (
            {"config": live_json(), "file:1/model.py": "text"},
            "File parameter 'file:1/model.py' must have bytes type for its value (got STRING)",
        ),
        (
            {"config": 3},
            "Config parameter 'config' must have string type for its value (got INT)",
        ),
        # Anything else.
        (
            {"bogus": True},
            f"Unrecognized load parameter 'bogus' with type 'BOOL' (expected {accepted})",
        ),
    ]
    for parameters, expected in cases:
        code, details = refusal(
            lambda p=parameters: stub.RepositoryModelLoad(load_request("live", **p), timeout=60)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (parameters, details)
        assert "\n" not in details
        if expected.startswith("model file not found"):  # after the private folder's path
            assert details.startswith("Invalid config override: /"), details
            assert details.endswith(f"/live/1/model.py: {expected}"), details
        else:
            assert details == expected, parameters
        # Nothing changed: the same version serves, computing the same, and no folder is left.
        assert index(stub) == before
        assert answer(stub) == ("2", 2.0)
        assert override_folders() == folders_before


def test_a_config_override_is_checked_exactly_like_a_config_pbtxt(
    tmp_path: Path, serve: ServeFn, channel_to: Callable[[ServerThread], grpc.Channel]
) -> None:
    root = make_repository(tmp_path / "models")
    make_repository(root, "twin")
    server = serve(root, model_control_mode="explicit", load_models=("live",))
    stub = Stub(channel_to(server))
    bad = live_config("twin").replace("max_batch_size: 8", "max_batch_size: -2")
    (root / "twin" / "config.pbtxt").write_text(bad)
    _, from_file = refusal(lambda: stub.RepositoryModelLoad(load_request("twin"), timeout=60))
    config = json.loads(live_json())
    config["max_batch_size"] = -2
    _, from_override = refusal(
        lambda: stub.RepositoryModelLoad(
            load_request("live", config=json.dumps(config)), timeout=60
        )
    )
    prefix = f"failed to load 'twin': {root / 'twin' / 'config.pbtxt'}: "
    assert from_file.startswith(prefix), from_file
    assert from_override == "Invalid config override: " + from_file.removeprefix(prefix)


# -- version policies ---------------------------------------------------------------------


def test_version_policy_changes_with_a_reload(
    tmp_path: Path, serve: ServeFn, channel_to: Callable[[ServerThread], grpc.Channel]
) -> None:
    root = make_repository(tmp_path / "models", versions=(1, 2, 3))
    server = serve(root, model_control_mode="explicit", load_models=("*",))
    stub = Stub(channel_to(server))
    config_file = root / "live" / "config.pbtxt"

    def served() -> list[str]:
        return [version for _, version, state, _ in index(stub) if state == "READY"]

    def each_answers(versions: list[str]) -> None:
        for version in versions:
            assert answer(stub, version=version) == (version, float(version))
            assert stub.ModelReady(pb.ModelReadyRequest(name="live", version=version)).ready

    assert served() == ["3"] and answer(stub) == ("3", 3.0)

    config_file.write_text(live_config(policy="all { }"))  # an edited config.pbtxt
    stub.RepositoryModelLoad(load_request("live"), timeout=60)
    assert served() == ["1", "2", "3"]
    each_answers(["1", "2", "3"])
    assert answer(stub) == ("3", 3.0)

    config_file.write_text(live_config(policy="specific { versions: [ 1, 2 ] }"))
    stub.RepositoryModelLoad(load_request("live"), timeout=60)
    assert served() == ["1", "2"]
    each_answers(["1", "2"])
    assert answer(stub) == ("2", 2.0)
    code, details = refusal(lambda: stub.ModelInfer(x_request(1.0, version="3"), timeout=30))
    assert code == grpc.StatusCode.NOT_FOUND
    assert details == "model 'live' has no version '3' (available versions: 1, 2)"

    # Through a config override: the config.pbtxt says specific [1, 2], the override wins.
    override = live_json(policy={"latest": {"num_versions": 2}})
    stub.RepositoryModelLoad(load_request("live", config=override), timeout=60)
    assert served() == ["2", "3"]
    each_answers(["2", "3"])
    assert not stub.ModelReady(pb.ModelReadyRequest(name="live", version="1")).ready

    # A load without the override reads the config.pbtxt again (as Triton's).
    stub.RepositoryModelLoad(load_request("live"), timeout=60)
    assert served() == ["1", "2"]


# -- the private override folder ------------------------------------------------------------


def test_the_override_folder_goes_with_its_versions(
    tmp_path: Path, channel_to: Callable[[ServerThread], grpc.Channel]
) -> None:
    from testsupport import start_server

    server = start_server(
        make_repository(tmp_path / "models"), model_control_mode="explicit", load_models=("*",)
    )
    try:
        stub = Stub(channel_to(server))
        before = override_folders()
        files = {"file:5/model.py": LIVE_SOURCE.encode()}
        # A model the repository does not hold may come entirely from overrides (as Triton).
        folders = {}
        for name in ("live", "extra"):
            known = override_folders()
            stub.RepositoryModelLoad(load_request(name, config=live_json(name), **files))
            assert answer(stub, name) == ("5", 5.0)
            [folders[name]] = override_folders() - known
        live_folder, extra_folder = folders["live"], folders["extra"]
        # A first load that fails keeps nothing of its folder; the index says why.
        broken = {"file:1/model.py": b"def broken(:\n"}
        code, details = refusal(
            lambda: stub.RepositoryModelLoad(
                load_request("gone", config=live_json("gone"), **broken)
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("failed to load 'gone': model 'gone' version 1: "), details
        assert override_folders() - before == {live_folder, extra_folder}
        [(version, state, reason)] = [row[1:] for row in index(stub) if row[0] == "gone"]
        assert (version, state) == ("1", "UNAVAILABLE") and "SyntaxError" in reason
        assert live_folder.stat().st_mode & 0o777 == 0o700
        model_file = live_folder / "live" / "5" / "model.py"
        assert model_file.read_bytes() == LIVE_SOURCE.encode()
        assert model_file.stat().st_mode & 0o777 == 0o600

        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="live"))
        assert not live_folder.exists() and extra_folder.exists()
        assert ("live", "5", "UNAVAILABLE", "unloaded") in index(stub)
    finally:
        server.stop()
    assert not extra_folder.exists()  # removed at server stop
    assert override_folders() == before


# -- hung versions in the index and the statistics ----------------------------------------


def test_a_hung_version_is_listed_as_model_ready_says_and_keeps_its_statistics(
    tmp_path: Path, serve: ServeFn, channel_to: Callable[[ServerThread], grpc.Channel]
) -> None:
    root = make_repository(tmp_path / "models")
    gate = tmp_path / "gate"
    stuck_source = textwrap.dedent(STUCK_SOURCE).format(gate=str(gate))
    write_python_model(root, "stuck", STUCK_CONFIG, stuck_source)
    server = serve(root, model_control_mode="explicit", load_models=("*",))
    stub = Stub(channel_to(server))

    def stuck_ready() -> bool:
        return stub.ModelReady(pb.ModelReadyRequest(name="stuck"), timeout=10).ready

    def stats_names() -> list[tuple[str, str]]:
        response = stub.ModelStatistics(pb.ModelStatisticsRequest(), timeout=10)
        return sorted((s.name, s.version) for s in response.model_stats)

    stuck_request = pb.ModelInferRequest(model_name="stuck")
    stuck_request.inputs.add(name="X", datatype="FP32", shape=[1, 3])
    stuck_request.raw_input_contents.append(np.zeros((1, 3), np.float32).tobytes())
    assert stats_names() == [("live", "2"), ("stuck", "1")]
    gate.touch()
    try:
        pending = stub.ModelInfer.future(stuck_request, timeout=60)
        wait_until(lambda: not stuck_ready(), "the hung model reported not ready")
        assert ("stuck", "1") not in [row[:2] for row in index(stub, ready=True)]
        rows = {row[:2]: row[2:] for row in index(stub)}
        state, reason = rows[("stuck", "1")]
        assert state == "UNAVAILABLE"
        assert reason == (
            "hung: its 1 instance(s) have each been running a batch for more than "
            "batchwire.hang_timeout_ms=200 ms; not ready until a batch returns"
        )
        assert rows[("live", "2")] == ("READY", "")
        assert stats_names() == [("live", "2"), ("stuck", "1")]
    finally:
        gate.unlink(missing_ok=True)
    assert pending.result(timeout=30).raw_output_contents
    wait_until(stuck_ready, "the model ready again once its batch returned")
    assert index(stub, ready=True) == [("live", "2", "READY", ""), ("stuck", "1", "READY", "")]
