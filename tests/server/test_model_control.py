"""Triton's model control modes through a real server: none, explicit, poll, and model names.

Every server runs on 127.0.0.1 with a free port and is driven through the gRPC stubs
(and tritonclient where a Triton user would use it). Poll-mode tests wait, bounded,
for the state they expect; none of them sleeps for a fixed time.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton
from dataplane_testkit import VERSIONED_SOURCE, x_request, y_of
from test_cli_startup import one_line
from test_cli_startup import serve as run_serve
from testsupport import start_server, wait_until, write_python_model

from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc
from batchwire.server.app import ServerThread
from batchwire.server.model_control import CONTROL_DISABLED

Stub = pb_grpc.GRPCInferenceServiceStub


def model_config(name: str, max_batch_size: int = 4) -> str:
    """A python model, Y = X + its version number."""
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n'
        'input { name: "X" data_type: TYPE_FP32 dims: [ 1 ] }\n'
        'output { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }\n'
    )


def add_model(root: Path, name: str, max_batch_size: int = 4) -> Path:
    return write_python_model(root, name, model_config(name, max_batch_size), VERSIONED_SOURCE)


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """Models ``a`` and ``b``, in ``<tmp>/models``; ``<tmp>`` itself is outside it."""
    root = tmp_path / "models"
    root.mkdir()
    add_model(root, "a")
    add_model(root, "b")
    return root


@pytest.fixture
def serve_repo() -> Iterator[Callable[..., ServerThread]]:
    """Starts servers with the given settings; stops them after the test."""
    servers: list[ServerThread] = []

    def start(root: Path, **settings: object) -> ServerThread:
        server = start_server(root, **settings)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def load(stub: Stub, name: str) -> object:
    return stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name), timeout=60)


def unload(stub: Stub, name: str) -> object:
    return stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=name), timeout=60)


def ready(stub: Stub, name: str) -> bool:
    return stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=10).ready


def server_ready(stub: Stub) -> bool:
    return stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready


def index(stub: Stub, ready_only: bool = False) -> list[tuple[str, str, str]]:
    response = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=ready_only), timeout=10)
    return [(m.name, m.version, m.state) for m in response.models]


def max_batch_size(stub: Stub, name: str) -> int:
    return stub.ModelConfig(pb.ModelConfigRequest(name=name), timeout=10).config.max_batch_size


# -- none (the default) ---------------------------------------------------------------


def test_none_mode_loads_everything_and_refuses_load_and_unload(
    repository: Path, serve_repo: Callable[..., ServerThread]
) -> None:
    server = serve_repo(repository)
    with grpc.insecure_channel(server.address) as channel:
        stub = Stub(channel)
        assert server_ready(stub) and ready(stub, "a") and ready(stub, "b")
        for call in (lambda: load(stub, "a"), lambda: unload(stub, "a")):
            assert refusal(call) == (grpc.StatusCode.UNAVAILABLE, CONTROL_DISABLED)
        # The mode is checked first: a bad name gets the same refusal, and nothing changes.
        assert refusal(lambda: load(stub, "../a")) == (
            grpc.StatusCode.UNAVAILABLE,
            CONTROL_DISABLED,
        )
        assert ready(stub, "a")
        assert index(stub) == [("a", "1", "READY"), ("b", "1", "READY")]
    client = triton.InferenceServerClient(server.address)
    try:
        for method in (client.load_model, client.unload_model):
            with pytest.raises(triton.InferenceServerException) as err:
                method("b")
            assert CONTROL_DISABLED in str(err.value)
        assert client.is_model_ready("b")
    finally:
        client.close()


# -- explicit -------------------------------------------------------------------------


def test_explicit_mode_serves_the_named_models_then_what_requests_load(
    repository: Path, serve_repo: Callable[..., ServerThread]
) -> None:
    server = serve_repo(repository, model_control_mode="explicit", load_models=("a",))
    with grpc.insecure_channel(server.address) as channel:
        stub = Stub(channel)
        assert ready(stub, "a") and not ready(stub, "b")
        assert server_ready(stub)  # b was never asked for: it does not count
        # As Triton's index: a folder never loaded is listed by name only.
        assert index(stub) == [("a", "1", "READY"), ("b", "", "")]
        assert index(stub, ready_only=True) == [("a", "1", "READY")]
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(x_request(1.0, model="b"), timeout=10)

        load(stub, "b")
        assert ready(stub, "b") and y_of(stub.ModelInfer(x_request(1.0, model="b"))) == 2.0
        unload(stub, "a")
        assert not ready(stub, "a") and server_ready(stub)
        load(stub, "a")
        assert ready(stub, "a") and server_ready(stub)


def test_explicit_mode_star_loads_everything_and_nothing_is_ready_too(
    repository: Path, serve_repo: Callable[..., ServerThread]
) -> None:
    every = serve_repo(repository, model_control_mode="explicit", load_models=("*",))
    nothing = serve_repo(repository, model_control_mode="explicit")
    with grpc.insecure_channel(every.address) as channel:
        stub = Stub(channel)
        assert ready(stub, "a") and ready(stub, "b") and server_ready(stub)
    with grpc.insecure_channel(nothing.address) as channel:
        stub = Stub(channel)
        assert not ready(stub, "a") and not ready(stub, "b")
        assert server_ready(stub)  # Triton: an explicit server with nothing loaded is ready
        assert index(stub, ready_only=True) == []


def test_a_reload_that_fails_keeps_the_loaded_version(
    repository: Path, serve_repo: Callable[..., ServerThread]
) -> None:
    server = serve_repo(repository, model_control_mode="explicit", load_models=("a",))
    with grpc.insecure_channel(server.address) as channel:
        stub = Stub(channel)
        (repository / "a" / "config.pbtxt").write_text('name: "a"\nmax_batch_size: [')
        code, details = refusal(lambda: load(stub, "a"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("failed to load 'a': ") and "config.pbtxt" in details
        assert ready(stub, "a") and server_ready(stub)
        assert y_of(stub.ModelInfer(x_request(2.0, model="a"), timeout=30)) == 3.0
        assert max_batch_size(stub, "a") == 4


def test_a_missing_load_model_stops_serve_with_one_line(repository: Path) -> None:
    common = ["--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"]
    common += ["--model-repository", str(repository), "--model-control-mode", "explicit"]
    completed = run_serve(*common, "--load-model", "a", "--load-model", "nope")
    assert completed.returncode == 1
    assert one_line(completed) == (
        f"batchwire: cannot load model 'nope' at start (--load-model): "
        f"{repository / 'nope'}: model folder not found"
    )
    completed = run_serve(*common, "--load-model", "../models/a")
    assert completed.returncode == 1
    assert one_line(completed) == (
        "batchwire: cannot load model '../models/a' at start (--load-model): model name "
        "'../models/a' must be a folder name in the repository (it contains a path separator)"
    )


# -- model names ----------------------------------------------------------------------


@pytest.fixture
def escaping_repository(repository: Path) -> Path:
    """``repository`` plus ``link`` (a model folder linked outside it) and ``vlink`` (a
    model whose version folder is linked outside it); both targets are valid models."""
    outside = repository.parent / "outside"
    add_model(outside, "link")
    add_model(outside, "vlink")
    os.symlink(outside / "link", repository / "link")
    (repository / "vlink").mkdir()
    shutil.copy(outside / "vlink" / "config.pbtxt", repository / "vlink" / "config.pbtxt")
    os.symlink(outside / "vlink" / "1", repository / "vlink" / "1")
    return repository


def test_names_leading_out_of_the_repository_are_refused(
    escaping_repository: Path, serve_repo: Callable[..., ServerThread]
) -> None:
    root = escaping_repository
    server = serve_repo(root, model_control_mode="explicit", load_models=("a",))
    real_root = root.resolve()
    separator = "it contains a path separator"
    expected = {
        "../outside/link": separator,
        "/etc": separator,
        "a/b": separator,
        "a\\b": separator,
        "..": "'..' is not a child folder of the repository",
        "": "it is empty",
    }
    with grpc.insecure_channel(server.address) as channel:
        stub = Stub(channel)
        for name, why in expected.items():
            assert refusal(lambda n=name: load(stub, n)) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                f"model name {name!r} must be a folder name in the repository ({why})",
            ), name
        code, details = refusal(lambda: load(stub, "link"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details == (
            f"model 'link': model folder {root / 'link'} resolves to "
            f"{(root.parent / 'outside' / 'link').resolve()}, outside the model repository "
            f"{real_root}"
        )
        code, details = refusal(lambda: load(stub, "vlink"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith(f"model 'vlink': version folder {root / 'vlink' / '1'} ")
        assert details.endswith(f", outside the model repository {real_root}")
        # Nothing was loaded, and the refusals left the server as it was.
        assert index(stub, ready_only=True) == [("a", "1", "READY")]
        assert not ready(stub, "link") and not ready(stub, "vlink") and server_ready(stub)


def test_a_linked_model_folder_leading_out_is_unavailable_at_start(
    escaping_repository: Path, serve_repo: Callable[..., ServerThread]
) -> None:
    server = serve_repo(escaping_repository)
    with grpc.insecure_channel(server.address) as channel:
        stub = Stub(channel)
        response = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
        rows = {m.name: (m.state, m.reason) for m in response.models}
        for name in ("link", "vlink"):
            state, reason = rows[name]
            assert state == "UNAVAILABLE" and "outside the model repository" in reason, name
        assert ready(stub, "a") and not ready(stub, "link") and not ready(stub, "vlink")


# -- poll -----------------------------------------------------------------------------


def test_poll_mode_follows_the_repository(
    repository: Path, serve_repo: Callable[..., ServerThread]
) -> None:
    server = serve_repo(repository, model_control_mode="poll", repository_poll_secs=0.2)
    with grpc.insecure_channel(server.address) as channel:
        stub = Stub(channel)
        assert ready(stub, "a") and ready(stub, "b") and server_ready(stub)
        for call in (lambda: load(stub, "a"), lambda: unload(stub, "a")):
            assert refusal(call) == (grpc.StatusCode.UNAVAILABLE, CONTROL_DISABLED)

        add_model(repository, "c")
        wait_until(lambda: ready(stub, "c"), "new model 'c' to be loaded")
        assert y_of(stub.ModelInfer(x_request(1.0, model="c"), timeout=30)) == 2.0

        (repository / "a" / "config.pbtxt").write_text(model_config("a", max_batch_size=8))
        wait_until(lambda: max_batch_size(stub, "a") == 8, "'a' to reload with its new config")
        assert ready(stub, "a")

        shutil.rmtree(repository / "c")
        wait_until(lambda: not ready(stub, "c"), "removed model 'c' to be unloaded")
        wait_until(lambda: "c" not in [row[0] for row in index(stub)], "'c' to leave the index")
        assert server_ready(stub)

        # A broken config and a new model in the same change: one scan handles both, 'a'
        # before 'd' (names in order), so once 'd' is ready the reload of 'a' was tried.
        (repository / "a" / "config.pbtxt").write_text('name: "a"\nmax_batch_size: [')
        add_model(repository, "d")
        wait_until(lambda: ready(stub, "d"), "new model 'd' to be loaded")
        assert ready(stub, "a") and max_batch_size(stub, "a") == 8
        assert y_of(stub.ModelInfer(x_request(1.0, model="a"), timeout=30)) == 2.0
        assert server_ready(stub)

        # Fixed again: the next change reloads it.
        (repository / "a" / "config.pbtxt").write_text(model_config("a", max_batch_size=2))
        wait_until(lambda: max_batch_size(stub, "a") == 2, "'a' to reload once fixed")


def test_a_failed_poll_is_logged_and_polling_goes_on(
    repository: Path, serve_repo: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    server = serve_repo(repository, model_control_mode="poll", repository_poll_secs=0.2)
    moved = repository.with_name("moved-away")
    with grpc.insecure_channel(server.address) as channel:
        stub = Stub(channel)
        with caplog.at_level("ERROR", logger="batchwire.server.model_control"):
            # A repository that cannot be listed (an unmounted volume, say) fails the scan;
            # it must not read as "every model was removed".
            repository.rename(moved)
            wait_until(
                lambda: "model repository poll failed" in caplog.text, "a failed poll logged"
            )
            assert ready(stub, "a") and ready(stub, "b") and server_ready(stub)
            moved.rename(repository)
        add_model(repository, "e")
        wait_until(lambda: ready(stub, "e"), "polling to go on after a failed scan")
        assert ready(stub, "a") and ready(stub, "b")
