"""Who may call what: Triton's restricted protocol groups, principals, tokens and scopes.

Real servers on loopback ports, called through gRPC stubs and tritonclient; every
refusal is checked for its status and its message.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from testsupport import start_server

from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc
from batchwire.protos import health_pb2, health_pb2_grpc, reflection_v1_pb2, reflection_v1_pb2_grpc
from batchwire.server.access import AccessConfigError, AuthConfig, parse_restricted_protocol
from batchwire.server.app import ServerThread

INFER_TOKEN = "infer-token-3f9a1c"
ADMIN_TOKEN = "admin-token-77e2b0"
MLP_TOKEN = "mlp-only-token-c41d"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def mlp_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp", id="r1")
    request.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.ones((1, 64), np.float32).tobytes())
    return request


def cnn_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="cnn", id="r2")
    request.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 3, 64, 64])
    request.raw_input_contents.append(np.ones((1, 3, 64, 64), np.float32).tobytes())
    return request


def refusal(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# -- restricted protocol groups (Triton's --grpc-restricted-protocol) -------------------

#: One RPC per Triton group: (group, stub method, request).
GROUP_CALLS = [
    ("health", "ServerReady", pb.ServerReadyRequest()),
    ("health", "ModelReady", pb.ModelReadyRequest(name="mlp")),
    ("metadata", "ServerMetadata", pb.ServerMetadataRequest()),
    ("metadata", "ModelMetadata", pb.ModelMetadataRequest(name="mlp")),
    ("inference", "ModelInfer", mlp_request()),
    ("shared-memory", "SystemSharedMemoryStatus", pb.SystemSharedMemoryStatusRequest()),
    ("model-config", "ModelConfig", pb.ModelConfigRequest(name="mlp")),
    ("model-repository", "RepositoryIndex", pb.RepositoryIndexRequest()),
    ("statistics", "ModelStatistics", pb.ModelStatisticsRequest(name="mlp")),
    ("trace", "TraceSetting", pb.TraceSettingRequest()),
    ("logging", "LogSettings", pb.LogSettingsRequest()),
]


@pytest.fixture(scope="module")
def restricted_server(examples_repository: Path) -> Iterator[ServerThread]:
    """Every group restricted: inference-ish groups by one key, the admin ones by another."""
    server = start_server(
        examples_repository,
        grpc_restricted_protocol=(
            "health,metadata,inference:infer-key=infer-value",
            "shared-memory,model-config,model-repository,statistics,trace,logging:"
            "admin-key=admin-value",
        ),
    )
    yield server
    server.stop()


def header_for(group: str) -> tuple[str, str]:
    if group in ("health", "metadata", "inference"):
        return ("infer-key", "infer-value")
    return ("admin-key", "admin-value")


@pytest.mark.parametrize(("group", "method", "request_message"), GROUP_CALLS)
def test_each_restricted_group_needs_its_header(
    restricted_server: ServerThread, group: str, method: str, request_message: object
) -> None:
    key, value = header_for(group)
    other = ("admin-key", "admin-value") if key == "infer-key" else ("infer-key", "infer-value")
    with grpc.insecure_channel(restricted_server.address) as channel:
        call = getattr(pb_grpc.GRPCInferenceServiceStub(channel), method)
        for metadata in ((), (other,), ((key, "wrong-value"),)):
            error = refusal(lambda m=metadata: call(request_message, metadata=m, timeout=10))
            assert error.code() == grpc.StatusCode.UNAVAILABLE, (method, metadata)
            assert error.details() == f"This protocol is restricted, expecting header '{key}'"
        # With the header the call goes through (to whatever the RPC itself answers).
        try:
            call(request_message, metadata=((key, value),), timeout=30)
        except grpc.RpcError as exc:
            assert "restricted" not in (exc.details() or ""), (method, exc.details())


def test_restricted_health_covers_the_grpc_health_service(restricted_server: ServerThread) -> None:
    with grpc.insecure_channel(restricted_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        error = refusal(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "expecting header 'infer-key'" in (error.details() or "")
        answer = health.Check(
            health_pb2.HealthCheckRequest(), metadata=(("infer-key", "infer-value"),), timeout=10
        )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_tritonclient_passes_restricted_headers(restricted_server: ServerThread) -> None:
    tritonclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    client = tritonclient.InferenceServerClient(restricted_server.address)
    with pytest.raises(InferenceServerException, match="This protocol is restricted"):
        client.get_model_config("mlp")
    config = client.get_model_config("mlp", headers={"admin-key": "admin-value"})
    assert config.config.name == "mlp"
    with pytest.raises(InferenceServerException, match="expecting header 'infer-key'"):
        client.is_server_ready()
    assert client.is_server_ready(headers={"infer-key": "infer-value"})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["health"], "expected <groups>:<key>=<value>"),
        (["health:key"], "expected <groups>:<key>=<value>"),
        (["helth:k=v"], "unknown group 'helth'"),
        (["health:k=v", "health,trace:k2=v2"], "group 'health' is restricted twice"),
    ],
)
def test_bad_restricted_protocol_values_say_what_is_wrong(values: list[str], message: str) -> None:
    with pytest.raises(AccessConfigError, match=message):
        parse_restricted_protocol(values)


def test_restricted_protocol_key_is_case_insensitive_value_is_not() -> None:
    rules = parse_restricted_protocol(["Inference:My-Key=Secret"])
    assert rules["inference"].key == "my-key"
    assert rules["inference"].value == "Secret"


# -- principals and scopes (--auth-config) ----------------------------------------------


def write_config(path: Path, extra: str = "") -> None:
    text = f"""
[[principals]]
name = "predictor"
token_sha256 = "{sha(INFER_TOKEN)}"
scopes = ["inference", "metadata"]

[[principals]]
name = "operator"
token_sha256 = "{sha(ADMIN_TOKEN)}"
scopes = ["admin", "metadata"]

[[principals]]
name = "mlp-client"
token_sha256 = "{sha(MLP_TOKEN)}"
scopes = ["inference:mlp"]
{extra}
"""
    # Replace atomically, as a config manager would, with a new modification time.
    scratch = path.with_suffix(".tmp")
    scratch.write_text(text)
    os.replace(scratch, path)


@pytest.fixture(scope="module")
def auth_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "auth.toml"
    write_config(path)
    return path


@pytest.fixture(scope="module")
def auth_server(examples_repository: Path, auth_config: Path) -> Iterator[ServerThread]:
    server = start_server(examples_repository, auth_config=auth_config)
    yield server
    server.stop()


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
def stub(auth_server: ServerThread) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(auth_server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def test_a_call_without_credentials_is_unauthenticated(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    error = refusal(lambda: stub.ModelInfer(mlp_request(), timeout=10))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "ModelInfer needs credentials" in (error.details() or "")
    assert "authorization: Bearer <token>" in (error.details() or "")


def test_an_unknown_or_malformed_token_is_unauthenticated_without_echoing_it(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    error = refusal(lambda: stub.ModelInfer(mlp_request(), metadata=bearer("nope-123"), timeout=10))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "the bearer token is not one this server knows"
    error = refusal(
        lambda: stub.ModelInfer(
            mlp_request(), metadata=(("authorization", f"Basic {INFER_TOKEN}"),), timeout=10
        )
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert INFER_TOKEN not in (error.details() or "")
    assert "must be 'Bearer <token>'" in (error.details() or "")


def test_each_scope_allows_its_operations_and_refuses_the_rest(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # predictor: inference + metadata.
    answer = stub.ModelInfer(mlp_request(), metadata=bearer(INFER_TOKEN), timeout=30)
    assert answer.model_name == "mlp"
    assert stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=bearer(INFER_TOKEN)).name
    assert stub.ModelConfig(pb.ModelConfigRequest(name="mlp"), metadata=bearer(INFER_TOKEN))
    assert stub.ModelStatistics(pb.ModelStatisticsRequest(name="mlp"), metadata=bearer(INFER_TOKEN))
    for method, message in (
        ("TraceSetting", pb.TraceSettingRequest()),
        ("LogSettings", pb.LogSettingsRequest()),
        ("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name="mlp")),
        ("SystemSharedMemoryStatus", pb.SystemSharedMemoryStatusRequest()),
        (
            "SystemSharedMemoryRegister",
            pb.SystemSharedMemoryRegisterRequest(name="r", key="/k", byte_size=64),
        ),
        ("SystemSharedMemoryUnregister", pb.SystemSharedMemoryUnregisterRequest()),
    ):
        error = refusal(
            lambda m=method, r=message: getattr(stub, m)(
                r, metadata=bearer(INFER_TOKEN), timeout=10
            )
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, method
        assert error.details() == (
            f"principal 'predictor' lacks scope 'admin', needed by {method}; "
            "it has: inference, metadata"
        )
    # operator: admin + metadata, no inference.
    assert stub.TraceSetting(pb.TraceSettingRequest(), metadata=bearer(ADMIN_TOKEN))
    error = refusal(lambda: stub.ModelInfer(mlp_request(), metadata=bearer(ADMIN_TOKEN)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "principal 'operator' lacks scope 'inference', needed by ModelInfer" in (
        error.details() or ""
    )


def test_a_model_scope_allows_that_model_only(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert (
        stub.ModelInfer(mlp_request(), metadata=bearer(MLP_TOKEN), timeout=30).model_name == "mlp"
    )
    error = refusal(lambda: stub.ModelInfer(cnn_request(), metadata=bearer(MLP_TOKEN), timeout=30))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == (
        "principal 'mlp-client' lacks scope 'inference:cnn'; it has: inference:mlp"
    )
    # No metadata scope: it cannot read configs either.
    error = refusal(
        lambda: stub.ModelConfig(pb.ModelConfigRequest(name="mlp"), metadata=bearer(MLP_TOKEN))
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    # A model it may not use is refused before the name is looked up.
    error = refusal(
        lambda: stub.ModelInfer(
            pb.ModelInferRequest(model_name="no-such-model"), metadata=bearer(MLP_TOKEN)
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_streams_refuse_per_request_and_stay_open(auth_server: ServerThread) -> None:
    with grpc.insecure_channel(auth_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answers = list(
            stub.ModelStreamInfer(iter([cnn_request(), mlp_request()]), metadata=bearer(MLP_TOKEN))
        )
        by_id = {a.infer_response.id: a for a in answers}
        assert "lacks scope 'inference:cnn'" in by_id["r2"].error_message
        assert by_id["r1"].error_message == ""
        assert by_id["r1"].infer_response.model_name == "mlp"
        error = refusal(lambda: list(stub.ModelStreamInfer(iter([mlp_request()]), timeout=10)))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_and_reflection_stay_open(
    stub: pb_grpc.GRPCInferenceServiceStub, auth_server: ServerThread
) -> None:
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    with grpc.insecure_channel(auth_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
        reflection = reflection_v1_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_v1_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(reflection.ServerReflectionInfo(iter([request]), timeout=10))
        names = {s.name for s in answer.list_services_response.service}
        assert "inference.GRPCInferenceService" in names


def test_tritonclient_sends_the_bearer_token(auth_server: ServerThread) -> None:
    tritonclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    client = tritonclient.InferenceServerClient(auth_server.address)
    data = tritonclient.InferInput("INPUT__0", [1, 64], "FP32")
    data.set_data_from_numpy(np.ones((1, 64), np.float32))
    with pytest.raises(InferenceServerException, match="needs credentials"):
        client.infer("mlp", [data])
    result = client.infer("mlp", [data], headers={"authorization": f"Bearer {INFER_TOKEN}"})
    assert result.as_numpy("OUTPUT__0").shape[0] == 1


def test_principal_metrics_name_the_principal_not_the_token(auth_server: ServerThread) -> None:
    with grpc.insecure_channel(auth_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(mlp_request(), metadata=bearer(MLP_TOKEN), timeout=30)
        refusal(lambda: stub.ModelInfer(mlp_request(), metadata=bearer("wrong"), timeout=10))
    telemetry = auth_server.server.telemetry
    assert telemetry is not None
    text = telemetry.render_metrics().decode()
    assert 'batchwire_principal_requests_total{model="mlp",principal="mlp-client"}' in text
    assert 'batchwire_access_refused_total{group="inference",reason="unauthenticated"}' in text
    for token in (INFER_TOKEN, ADMIN_TOKEN, MLP_TOKEN, sha(MLP_TOKEN)):
        assert token not in text


def test_the_config_reloads_when_the_file_changes(
    auth_server: ServerThread, auth_config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    new_token = "late-joiner-9d0e"
    with grpc.insecure_channel(auth_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        error = refusal(lambda: stub.ModelInfer(mlp_request(), metadata=bearer(new_token)))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        write_config(
            auth_config,
            f'[[principals]]\nname = "late"\ntoken_sha256 = "{sha(new_token)}"\n'
            'scopes = ["inference"]\n',
        )
        answer = eventually(lambda: stub.ModelInfer(mlp_request(), metadata=bearer(new_token)))
        assert answer.model_name == "mlp"
        # A file that no longer parses: logged, and the config in force stays.
        with caplog.at_level(logging.ERROR, logger="batchwire.server.access"):
            auth_config.write_text("[[principals]\nname = ")
            deadline = time.monotonic() + 30
            while "previous auth config stays in force" not in caplog.text:
                stub.ModelInfer(mlp_request(), metadata=bearer(new_token), timeout=30)
                assert time.monotonic() < deadline, "the broken file was never reported"
                time.sleep(0.1)
        assert "not valid TOML" in caplog.text
        assert stub.ModelInfer(mlp_request(), metadata=bearer(new_token)).model_name == "mlp"
        write_config(auth_config)  # back to the module's config
        error = eventually(
            lambda: _expect_refusal(
                lambda: stub.ModelInfer(mlp_request(), metadata=bearer(new_token))
            )
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def _expect_refusal(call: Callable[[], object]) -> grpc.RpcError:
    try:
        call()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call was allowed")


def eventually(call: Callable[[], object], timeout: float = 30.0) -> object:
    """``call()``'s result once it stops raising (the config is re-read within a second)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except (grpc.RpcError, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_tokens_never_reach_the_logs(
    examples_repository: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "auth.toml"
    write_config(config)
    with caplog.at_level(logging.DEBUG):
        server = start_server(examples_repository, auth_config=config)
        try:
            with grpc.insecure_channel(server.address) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                stub.ModelInfer(mlp_request(), metadata=bearer(INFER_TOKEN), timeout=30)
                for token in (ADMIN_TOKEN, "unknown-token-5a5a"):
                    refusal(lambda t=token: stub.ModelInfer(mlp_request(), metadata=bearer(t)))
                refusal(lambda: stub.ModelInfer(cnn_request(), metadata=bearer(MLP_TOKEN)))
        finally:
            server.stop()
    assert "auth config" in caplog.text  # the capture saw the server's records
    for secret in (INFER_TOKEN, ADMIN_TOKEN, MLP_TOKEN, "unknown-token-5a5a"):
        assert secret not in caplog.text


def test_open_can_close_health_to_anonymous_callers(
    examples_repository: Path, tmp_path: Path
) -> None:
    config = tmp_path / "auth.toml"
    write_config(config)
    config.write_text("open = []\n" + config.read_text())
    server = start_server(examples_repository, auth_config=config)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            error = refusal(lambda: stub.ServerReady(pb.ServerReadyRequest(), timeout=10))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            error = refusal(
                lambda: stub.ServerReady(pb.ServerReadyRequest(), metadata=bearer(INFER_TOKEN))
            )
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "lacks scope 'health'" in (error.details() or "")
            reflection = reflection_v1_pb2_grpc.ServerReflectionStub(channel)
            listing = reflection_v1_pb2.ServerReflectionRequest(list_services="")
            error = refusal(lambda: list(reflection.ServerReflectionInfo(iter([listing]))))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            error = refusal(
                lambda: list(
                    reflection.ServerReflectionInfo(iter([listing]), metadata=bearer(INFER_TOKEN))
                )
            )
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "lacks scope 'reflection', needed by ServerReflectionInfo" in (
                error.details() or ""
            )
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[principals]]\nname = "a"\nscopes = []\n', "needs token_sha256 or certificate"),
        (
            f'[[principals]]\nname = "a"\ntoken_sha256 = "{sha("x")}"\nscopes = ["adm"]\n',
            "unknown scope 'adm'",
        ),
        ('[[principals]]\nname = "a"\ntoken_sha256 = "abc"\n', "must be 64 hex digits"),
        (
            f'[[principals]]\nname = "a"\ntoken_sha256 = "{sha("x")}"\n'
            f'[[principals]]\nname = "a"\ntoken_sha256 = "{sha("y")}"\n',
            "principal 'a' is named twice",
        ),
        (
            f'[[principals]]\nname = "a"\ntoken_sha256 = "{sha("x")}"\n'
            f'[[principals]]\nname = "b"\ntoken_sha256 = "{sha("x")}"\n',
            "has the token of another principal",
        ),
        ('open = ["everything"]\n', "open must be a list of scopes"),
        ("colour = 1\n", "unknown key 'colour'"),
        ("[[principals]\n", "not valid TOML"),
    ],
)
def test_bad_auth_configs_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "auth.toml"
    path.write_text(text)
    with pytest.raises(AccessConfigError, match=message) as info:
        AuthConfig.load(path)
    assert str(path) in str(info.value)


def test_traces_carry_the_principal_name(examples_repository: Path, tmp_path: Path) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from batchwire.server.settings import ServerSettings

    config = tmp_path / "auth.toml"
    write_config(config)
    exporter = InMemorySpanExporter()
    settings = ServerSettings(
        host="127.0.0.1",
        port=0,
        model_repository=examples_repository,
        auth_config=config,
        trace_mode="always",
    )
    server = ServerThread(settings, span_exporter=exporter).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stub.ModelInfer(mlp_request(), metadata=bearer(MLP_TOKEN), timeout=30)
            refusal(lambda: stub.ModelInfer(cnn_request(), metadata=bearer(MLP_TOKEN)))
        telemetry = server.server.telemetry
        assert telemetry is not None
        assert telemetry.tracing.flush()
    finally:
        server.stop()
    spans = [s for s in exporter.get_finished_spans() if s.name == "ModelInfer"]
    assert len(spans) == 2
    for span in spans:
        assert span.attributes is not None
        assert span.attributes["enduser.id"] == "mlp-client"
        assert MLP_TOKEN not in repr(dict(span.attributes))
    refused = [s for s in spans if s.attributes and s.attributes["rpc.grpc.status_code"] == 7]
    assert len(refused) == 1


def test_a_token_made_by_batchwire_auth_admits_its_principal(
    examples_repository: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from batchwire.server.cli import app

    made = CliRunner().invoke(
        app, ["auth", "new-token", "checkout", "--scope", "inference:mlp", "--scope", "metadata"]
    )
    assert made.exit_code == 0, made.output
    lines = made.output.splitlines()
    token = lines[1]
    entry = "\n".join(line for line in lines[2:] if not line.startswith("#"))
    assert f'token_sha256 = "{sha(token)}"' in entry
    config = tmp_path / "auth.toml"
    config.write_text(entry + "\n")
    hashed = CliRunner().invoke(app, ["auth", "hash-token"], input=token + "\n")
    assert hashed.output.strip() == sha(token)
    server = start_server(examples_repository, auth_config=config)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelInfer(mlp_request(), metadata=bearer(token), timeout=30).model_name
            error = refusal(lambda: stub.ModelInfer(cnn_request(), metadata=bearer(token)))
            assert "principal 'checkout' lacks scope 'inference:cnn'" in (error.details() or "")
    finally:
        server.stop()


def test_serve_refuses_bad_access_options_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "batchwire",
                "serve",
                "--port",
                "0",
                "--metrics-port",
                "0",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    bad_group = serve("--grpc-restricted-protocol", "helth:k=v")
    assert bad_group.returncode == 2
    assert "unknown group 'helth'" in bad_group.stderr
    config = tmp_path / "auth.toml"
    config.write_text('[[principals]]\nname = "x"\nscopes = ["inference"]\n')
    bad_config = serve("--auth-config", str(config))
    assert bad_config.returncode == 1
    assert bad_config.stderr.strip().splitlines() == [
        f"batchwire: --auth-config {config}: principals[0] ('x'): needs token_sha256 or "
        "certificate to be recognised"
    ]
    missing = serve("--auth-config", str(tmp_path / "missing.toml"))
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f"batchwire: --auth-config {tmp_path / 'missing.toml'}: No such file or directory"
    )


def test_client_certificates_name_principals_under_mutual_tls(
    examples_repository: Path, tmp_path: Path
) -> None:
    from certificates import Authority

    ca = Authority.create()
    ca_file = ca.write(tmp_path / "ca.pem")
    cert, key = ca.server_certificate().write(tmp_path, "server")
    config = tmp_path / "auth.toml"
    write_config(
        config,
        '[[principals]]\nname = "ops"\ncertificate = "ops.batchwire.internal"\n'
        'scopes = ["admin", "metadata"]\n'
        '[[principals]]\nname = "reader"\ncertificate = "reader"\nscopes = ["metadata"]\n',
    )
    server = start_server(
        examples_repository,
        grpc_use_ssl_mutual=True,
        grpc_server_cert=cert,
        grpc_server_key=key,
        grpc_root_cert=ca_file,
        auth_config=config,
    )

    def channel(client_name: str, dns_names: tuple[str, ...] = ()) -> grpc.Channel:
        issued = ca.client_certificate(client_name, dns_names=dns_names)
        credentials = grpc.ssl_channel_credentials(ca.cert_pem, issued.key_pem, issued.cert_pem)
        return grpc.secure_channel(server.address, credentials)

    try:
        # Named by a subject alternative name.
        with channel("someone", ("ops.batchwire.internal",)) as ops:
            stub = pb_grpc.GRPCInferenceServiceStub(ops)
            assert stub.TraceSetting(pb.TraceSettingRequest(), timeout=10)
            error = refusal(lambda: stub.ModelInfer(mlp_request(), timeout=10))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "principal 'ops' lacks scope 'inference'" in (error.details() or "")
            # A token, when sent, names the principal whatever the certificate says.
            answer = stub.ModelInfer(mlp_request(), metadata=bearer(INFER_TOKEN), timeout=30)
            assert answer.model_name == "mlp"
        # Named by the common name.
        with channel("reader") as reader:
            stub = pb_grpc.GRPCInferenceServiceStub(reader)
            assert stub.ModelConfig(pb.ModelConfigRequest(name="mlp"), timeout=10)
            error = refusal(lambda: stub.LogSettings(pb.LogSettingsRequest(), timeout=10))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        # A valid certificate that names no principal.
        with channel("stranger") as stranger:
            stub = pb_grpc.GRPCInferenceServiceStub(stranger)
            error = refusal(lambda: stub.ModelConfig(pb.ModelConfigRequest(name="mlp")))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert error.details() == "no principal is named by the client certificate (stranger)"
    finally:
        server.stop()
