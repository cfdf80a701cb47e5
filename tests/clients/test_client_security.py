"""The clients and ``batchwire infer`` against secured servers: tokens, headers, TLS, mTLS.

Real servers on loopback ports: batchwire with an auth config, with Triton's restricted
protocol, with TLS and with mutual TLS (certificates made per module by
``tests/certificates.py``); the echo server shows which metadata arrives.
"""

from __future__ import annotations

import hashlib
import logging
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from certificates import Authority
from testsupport import start_server
from typer.testing import CliRunner, Result

from batchwire.clients import AsyncInferenceClient, InferenceClient, InferenceServerError
from batchwire.clients.cli import build_app
from batchwire.clients.tls import CertificateFileError, ssl_credentials
from batchwire.server.app import ServerThread

TOKEN = "client-test-token-5e1d"
WRONG_TOKEN = "not-a-known-token-0b7c"
RESTRICTED_KEY, RESTRICTED_VALUE = "infer-key", "infer-value"

runner = CliRunner()


def mlp_inputs() -> dict[str, np.ndarray]:
    return {"INPUT__0": np.ones((1, 64), np.float32)}


def write_auth_config(path: Path) -> Path:
    """One principal by token, one by client certificate (CN ``alice``)."""
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    path.write_text(
        "[[principals]]\n"
        'name = "predictor"\n'
        f'token_sha256 = "{digest}"\n'
        'scopes = ["inference", "metadata"]\n'
        "\n"
        "[[principals]]\n"
        'name = "alice"\n'
        'certificate = "alice"\n'
        'scopes = ["inference", "metadata"]\n'
    )
    return path


def server_error(call: object) -> InferenceServerError:
    assert callable(call)
    with pytest.raises(InferenceServerError) as info:
        call()
    return info.value


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(build_app(), ["infer", "--model", "mlp", "--random", *args], env=env)


# -- bearer tokens --------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_auth_config(tmp_path_factory.mktemp("client-auth") / "auth.toml")


@pytest.fixture(scope="module")
def auth_server(examples_repository: Path, auth_config: Path) -> Iterator[ServerThread]:
    server = start_server(examples_repository, auth_config=auth_config)
    yield server
    server.stop()


def test_a_token_goes_with_every_call(auth_server: ServerThread) -> None:
    with InferenceClient(auth_server.address, token=TOKEN, timeout=30) as client:
        assert client.server_metadata().name
        assert [t.name for t in client.model_metadata("mlp").inputs] == ["INPUT__0"]
        assert client.model_config("mlp").name == "mlp"
        assert client.model_statistics("mlp").model_stats[0].name == "mlp"
        assert "mlp" in {model.name for model in client.repository_index()}
        assert client.infer("mlp", mlp_inputs()).as_numpy("OUTPUT__0").shape == (1, 10)
        results = list(client.stream_infer("mlp", [mlp_inputs(), mlp_inputs()]))
        assert sorted(result.id for result in results) == ["0", "1"]


def test_without_a_token_each_call_kind_is_unauthenticated(auth_server: ServerThread) -> None:
    with InferenceClient(auth_server.address, timeout=30) as client:
        assert client.server_ready()  # health stays open to anyone
        for method, call in (
            ("ServerMetadata", client.server_metadata),
            ("ModelMetadata", lambda: client.model_metadata("mlp")),
            ("ModelConfig", lambda: client.model_config("mlp")),
            ("ModelStatistics", lambda: client.model_statistics("mlp")),
            ("RepositoryIndex", client.repository_index),
            ("ModelInfer", lambda: client.infer("mlp", mlp_inputs())),
            ("ModelStreamInfer", lambda: list(client.stream_infer("mlp", [mlp_inputs()]))),
        ):
            error = server_error(call)
            assert error.status_code == grpc.StatusCode.UNAUTHENTICATED, method
            assert f"{method} needs credentials" in error.message
            assert "authorization: Bearer <token>" in error.message


def test_a_refused_token_is_in_no_error_log_or_repr(
    auth_server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.DEBUG),
        InferenceClient(auth_server.address, token=WRONG_TOKEN, timeout=30) as client,
    ):
        errors = [
            server_error(lambda: client.infer("mlp", mlp_inputs())),
            server_error(lambda: client.model_config("mlp")),
            server_error(lambda: list(client.stream_infer("mlp", [mlp_inputs()]))),
        ]
        shown = repr(client)
    assert (
        shown == f"InferenceClient('{auth_server.address}', tls=False, headers=['authorization'])"
    )
    for error in errors:
        assert error.status_code == grpc.StatusCode.UNAUTHENTICATED
        assert error.message == "the bearer token is not one this server knows"
        # The whole traceback, gRPC's own error (the cause) included.
        text = "".join(traceback.format_exception(error)) + repr(error)
        assert WRONG_TOKEN not in text
    assert WRONG_TOKEN not in caplog.text


def test_a_calls_headers_win_over_the_clients(auth_server: ServerThread) -> None:
    good = {"authorization": f"Bearer {TOKEN}"}
    with InferenceClient(auth_server.address, token=WRONG_TOKEN, timeout=30) as client:
        assert client.infer("mlp", mlp_inputs(), headers=good).model_name == "mlp"
        (result,) = client.stream_infer("mlp", [mlp_inputs()], headers=good)
        assert not isinstance(result, InferenceServerError)
        assert result.model_name == "mlp"
    # A call's unrelated header adds to the client's: the token still goes.
    with InferenceClient(auth_server.address, token=TOKEN, timeout=30) as client:
        assert client.infer("mlp", mlp_inputs(), headers={"x-trace": "1"}).model_name == "mlp"


def test_client_and_call_headers_merge(echo_address: str) -> None:
    """The echo server copies ``x-*`` metadata into the response parameters."""
    headers = {"X-Client": "c", "x-both": "client"}
    with InferenceClient(echo_address, headers=headers, timeout=10) as client:
        result = client.infer("echo", {"x": np.zeros(1)})
        assert (result.parameters["x-client"], result.parameters["x-both"]) == ("c", "client")
        result = client.infer("echo", {"x": np.zeros(1)}, headers={"x-both": "call"})
        assert (result.parameters["x-client"], result.parameters["x-both"]) == ("c", "call")
        (streamed,) = client.stream_infer("echo", [{"x": np.zeros(1)}], headers={"x-both": "s"})
        assert not isinstance(streamed, InferenceServerError)
        assert (streamed.parameters["x-client"], streamed.parameters["x-both"]) == ("c", "s")


async def test_the_async_client_sends_its_token(auth_server: ServerThread) -> None:
    async with AsyncInferenceClient(auth_server.address, token=TOKEN, timeout=30) as client:
        assert (await client.server_metadata()).name
        assert (await client.model_config("mlp")).name == "mlp"
        assert (await client.model_statistics("mlp")).model_stats[0].name == "mlp"
        assert (await client.infer("mlp", mlp_inputs())).model_name == "mlp"
        ids = [result.id async for result in client.stream_infer("mlp", [mlp_inputs()])]
        assert ids == ["0"]
        good = {"authorization": f"Bearer {TOKEN}"}
        assert TOKEN not in repr(client)
    async with AsyncInferenceClient(auth_server.address, token=WRONG_TOKEN, timeout=30) as client:
        with pytest.raises(InferenceServerError) as info:
            await client.model_metadata("mlp")
        assert info.value.status_code == grpc.StatusCode.UNAUTHENTICATED
        assert WRONG_TOKEN not in str(info.value)
        assert (await client.infer("mlp", mlp_inputs(), headers=good)).model_name == "mlp"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"token": "two words"}, "the token must be printable ASCII without spaces"),
        ({"token": "caf\u00e9"}, "the token must be printable ASCII without spaces"),
        (
            {"token": TOKEN, "headers": {"Authorization": "Bearer x"}},
            "either as token or as an 'authorization' header",
        ),
        ({"headers": {"bad key": "v"}}, "header name 'bad key' is not a valid gRPC metadata key"),
        ({"headers": {"x-bin": "v"}}, "not ending in '-bin'"),
        ({"headers": {"x-secret": "line\nbreak"}}, "the value of header 'x-secret'"),
    ],
)
def test_bad_headers_and_tokens_fail_at_construction(
    arguments: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message) as info:
        InferenceClient("127.0.0.1:1", **arguments)  # type: ignore[arg-type]
    assert "caf\u00e9" not in str(info.value) and "two words" not in str(info.value)
    assert "line\nbreak" not in str(info.value)
    with pytest.raises(ValueError, match=message):
        AsyncInferenceClient("127.0.0.1:1", **arguments)  # type: ignore[arg-type]


def test_a_token_with_surrounding_whitespace_is_trimmed(auth_server: ServerThread) -> None:
    with InferenceClient(auth_server.address, token=f"  {TOKEN}\n", timeout=30) as client:
        assert client.infer("mlp", mlp_inputs()).model_name == "mlp"


# -- restricted protocol headers -------------------------------------------------------


@pytest.fixture(scope="module")
def restricted_server(examples_repository: Path) -> Iterator[ServerThread]:
    server = start_server(
        examples_repository,
        grpc_restricted_protocol=(
            "health,metadata,inference,model-config,statistics,model-repository:"
            f"{RESTRICTED_KEY}={RESTRICTED_VALUE}",
        ),
    )
    yield server
    server.stop()


def test_client_headers_pass_a_restricted_protocol(restricted_server: ServerThread) -> None:
    # Keys are sent lower-cased, as gRPC requires; the server compares them so.
    headers = {"Infer-Key": RESTRICTED_VALUE}
    with InferenceClient(restricted_server.address, headers=headers, timeout=30) as client:
        assert client.server_ready() and client.model_ready("mlp")
        assert client.health() == "SERVING"
        assert client.server_metadata().name
        assert client.model_config("mlp").name == "mlp"
        assert client.model_statistics("mlp").model_stats
        assert client.repository_index()
        assert client.infer("mlp", mlp_inputs()).model_name == "mlp"
        assert len(list(client.stream_infer("mlp", [mlp_inputs()]))) == 1
    with InferenceClient(restricted_server.address, timeout=30) as client:
        for call in (client.server_ready, lambda: client.infer("mlp", mlp_inputs())):
            error = server_error(call)
            assert error.status_code == grpc.StatusCode.UNAVAILABLE
            assert (
                error.message == f"This protocol is restricted, expecting header '{RESTRICTED_KEY}'"
            )


async def test_async_client_headers_pass_a_restricted_protocol(
    restricted_server: ServerThread,
) -> None:
    headers = {RESTRICTED_KEY: RESTRICTED_VALUE}
    async with AsyncInferenceClient(restricted_server.address, headers=headers, timeout=30) as c:
        assert await c.server_ready()
        assert (await c.model_statistics("mlp")).model_stats
        assert (await c.infer("mlp", mlp_inputs())).model_name == "mlp"
        assert [r.id async for r in c.stream_infer("mlp", [mlp_inputs()])] == ["0"]


# -- the command line ------------------------------------------------------------------


def test_cli_token_from_the_environment(auth_server: ServerThread) -> None:
    result = cli("--url", auth_server.address, env={"BATCHWIRE_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    assert "model 'mlp' version '1'" in result.stdout
    result = cli("--url", auth_server.address, "--token", TOKEN, env={"BATCHWIRE_TOKEN": ""})
    assert result.exit_code == 0, result.output
    result = cli("--url", auth_server.address, env={"BATCHWIRE_TOKEN": ""})
    assert result.exit_code == 1
    assert result.stderr.strip().startswith(
        "error: UNAUTHENTICATED: ModelMetadata needs credentials"
    )
    result = cli("--url", auth_server.address, env={"BATCHWIRE_TOKEN": WRONG_TOKEN})
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: UNAUTHENTICATED: the bearer token is not one this server knows"
    )
    assert WRONG_TOKEN not in result.output


def test_cli_headers(auth_server: ServerThread, restricted_server: ServerThread) -> None:
    result = cli(
        "--url", auth_server.address, "--header", f"authorization: Bearer {TOKEN}",
        env={"BATCHWIRE_TOKEN": ""},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = cli("-u", restricted_server.address, "-H", f"{RESTRICTED_KEY}:{RESTRICTED_VALUE}")
    assert result.exit_code == 0, result.output
    result = cli("-u", restricted_server.address, "-H", f"{RESTRICTED_KEY}:wrong")
    assert result.exit_code == 1
    assert "expecting header 'infer-key'" in result.stderr


def test_cli_refuses_bad_headers_and_tokens_in_one_line() -> None:
    for args, message in (
        (["-H", "no-colon"], "expected <key>:<value>, got no ':' (header 1)"),
        (["-H", "x:1", "-H", ": Bearer hidden-value"], "got a value without a key"),
        (["-H", "bad key:v"], "error: header name 'bad key' is not a valid gRPC metadata key"),
        (["--token", "has space"], "error: the token must be printable ASCII without spaces"),
    ):
        result = cli("--url", "127.0.0.1:1", *args, env={"BATCHWIRE_TOKEN": ""})
        assert result.exit_code == 2, args
        assert message in result.output, result.output
        assert "hidden-value" not in result.output and "has space" not in result.output


def test_cli_help_names_the_token_variable() -> None:
    result = runner.invoke(
        build_app(), ["infer", "--help"], env={"BATCHWIRE_TOKEN": "leak-check-77", "COLUMNS": "80"}
    )
    assert result.exit_code == 0
    assert "BATCHWIRE_TOKEN" in result.stdout
    assert "shell history" in " ".join(result.stdout.split())
    assert "leak-check-77" not in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


# -- TLS and mutual TLS ----------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path  # CN alice: a principal of the auth config
    client_key: Path
    stranger_cert: Path  # CN mallory, same CA: no principal
    stranger_key: Path
    rogue_cert: Path  # CN alice, another CA: refused in the handshake
    rogue_key: Path


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    folder = tmp_path_factory.mktemp("client-tls")
    ca = Authority.create("client tests CA")
    server_cert, server_key = ca.server_certificate().write(folder, "server")
    client_cert, client_key = ca.client_certificate("alice").write(folder, "alice")
    stranger_cert, stranger_key = ca.client_certificate("mallory").write(folder, "mallory")
    rogue = Authority.create("another CA").client_certificate("alice")
    rogue_cert, rogue_key = rogue.write(folder, "rogue")
    return TlsFiles(
        ca.write(folder / "ca.crt"),
        server_cert,
        server_key,
        client_cert,
        client_key,
        stranger_cert,
        stranger_key,
        rogue_cert,
        rogue_key,
    )


@pytest.fixture(scope="module")
def tls_server(examples_repository: Path, tls_files: TlsFiles) -> Iterator[ServerThread]:
    server = start_server(
        examples_repository,
        grpc_use_ssl=True,
        grpc_server_cert=tls_files.server_cert,
        grpc_server_key=tls_files.server_key,
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(
    examples_repository: Path, tls_files: TlsFiles, auth_config: Path
) -> Iterator[ServerThread]:
    server = start_server(
        examples_repository,
        grpc_use_ssl_mutual=True,
        grpc_server_cert=tls_files.server_cert,
        grpc_server_key=tls_files.server_key,
        grpc_root_cert=tls_files.ca,
        auth_config=auth_config,
    )
    yield server
    server.stop()


def test_tls_with_the_servers_ca(tls_server: ServerThread, tls_files: TlsFiles) -> None:
    with InferenceClient(tls_server.address, root_certificates=tls_files.ca, timeout=30) as client:
        assert client.tls and "tls=True" in repr(client)
        assert client.infer("mlp", mlp_inputs()).model_name == "mlp"
        assert len(list(client.stream_infer("mlp", [mlp_inputs()]))) == 1
    credentials = ssl_credentials(root_certificates=str(tls_files.ca))
    with InferenceClient(tls_server.address, credentials=credentials, timeout=30) as client:
        assert client.model_config("mlp").name == "mlp"


def test_tls_refusals(tls_server: ServerThread) -> None:
    # Plaintext to a TLS port, and TLS trusting only the system's CAs: no connection.
    for arguments in ({}, {"ssl": True}):
        with InferenceClient(tls_server.address, timeout=10, **arguments) as client:  # type: ignore[arg-type]
            assert server_error(client.server_ready).status_code == grpc.StatusCode.UNAVAILABLE


async def test_async_client_over_tls(tls_server: ServerThread, tls_files: TlsFiles) -> None:
    async with AsyncInferenceClient(
        tls_server.address, ssl=True, root_certificates=tls_files.ca, timeout=30
    ) as client:
        assert (await client.infer("mlp", mlp_inputs())).model_name == "mlp"


def test_mutual_tls_names_the_principal(mtls_server: ServerThread, tls_files: TlsFiles) -> None:
    common = {"root_certificates": tls_files.ca, "timeout": 30}
    with InferenceClient(
        mtls_server.address,
        private_key=tls_files.client_key,
        certificate_chain=tls_files.client_cert,
        **common,  # type: ignore[arg-type]
    ) as client:
        assert client.infer("mlp", mlp_inputs()).model_name == "mlp"  # no token: alice's cert
        assert client.model_config("mlp").name == "mlp"
    # A certificate the CA signed for no principal: in, but unauthenticated; a token helps.
    stranger = {"private_key": tls_files.stranger_key, "certificate_chain": tls_files.stranger_cert}
    with InferenceClient(mtls_server.address, **stranger, **common) as client:  # type: ignore[arg-type]
        error = server_error(lambda: client.infer("mlp", mlp_inputs()))
        assert error.status_code == grpc.StatusCode.UNAUTHENTICATED
    with InferenceClient(mtls_server.address, token=TOKEN, **stranger, **common) as client:  # type: ignore[arg-type]
        assert client.infer("mlp", mlp_inputs()).model_name == "mlp"
    # No client certificate, or one from another CA: the handshake fails.
    rogue = {"private_key": tls_files.rogue_key, "certificate_chain": tls_files.rogue_cert}
    for arguments in ({}, rogue):
        with InferenceClient(mtls_server.address, **arguments, **common) as client:  # type: ignore[arg-type]
            assert server_error(client.server_ready).status_code == grpc.StatusCode.UNAVAILABLE


async def test_async_client_over_mutual_tls(mtls_server: ServerThread, tls_files: TlsFiles) -> None:
    credentials = ssl_credentials(tls_files.ca, tls_files.client_key, tls_files.client_cert)
    async with AsyncInferenceClient(mtls_server.address, credentials=credentials, timeout=30) as c:
        assert (await c.infer("mlp", mlp_inputs())).model_name == "mlp"
        assert [r.id async for r in c.stream_infer("mlp", [mlp_inputs()])] == ["0"]


def test_cli_over_tls(tls_server: ServerThread, tls_files: TlsFiles) -> None:
    result = cli("-u", tls_server.address, "--ssl", "--root-certificates", str(tls_files.ca))
    assert result.exit_code == 0, result.output
    result = cli("-u", tls_server.address, "--root-certificates", str(tls_files.ca))
    assert result.exit_code == 0, result.output  # a file implies --ssl
    result = cli("-u", tls_server.address, "--timeout", "10")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: UNAVAILABLE: ")


def test_cli_over_mutual_tls(mtls_server: ServerThread, tls_files: TlsFiles) -> None:
    result = cli(
        "-u", mtls_server.address, "--ssl", "--root-certificates", str(tls_files.ca),
        "--private-key", str(tls_files.client_key),
        "--certificate-chain", str(tls_files.client_cert),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # perf_analyzer's spellings.
    result = cli(
        "-u", mtls_server.address, "--ssl-grpc-use-ssl",
        "--ssl-grpc-root-certifications-file", str(tls_files.ca),
        "--ssl-grpc-private-key-file", str(tls_files.client_key),
        "--ssl-grpc-certificate-chain-file", str(tls_files.client_cert),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = cli("-u", mtls_server.address, "--root-certificates", str(tls_files.ca),
                 "--timeout", "10")  # fmt: skip
    assert result.exit_code == 1
    assert "UNAVAILABLE" in result.stderr


# -- certificate files that cannot be used -----------------------------------------------


def bad_files(folder: Path, tls_files: TlsFiles) -> list[tuple[str, Path, str]]:
    """(argument, path, problem) for each kind of unusable file."""
    empty = folder / "empty.pem"
    empty.write_text("\n")
    encrypted = folder / "encrypted.key"
    encrypted.write_text(
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
    )
    return [
        ("root_certificates", folder / "missing.crt", "no such file"),
        ("root_certificates", folder, "is a directory, not a file"),
        ("root_certificates", empty, "is empty"),
        ("root_certificates", tls_files.client_key, "holds no PEM certificate"),
        ("certificate_chain", tls_files.client_key, "holds no PEM certificate"),
        ("private_key", tls_files.client_cert, "holds no PEM private key"),
        ("private_key", encrypted, "the key is encrypted; gRPC needs it without a passphrase"),
    ]


def test_unusable_files_raise_naming_them(tmp_path: Path, tls_files: TlsFiles) -> None:
    pair = {"private_key": tls_files.client_key, "certificate_chain": tls_files.client_cert}
    for argument, path, problem in bad_files(tmp_path, tls_files):
        arguments = {**pair, argument: path}
        with pytest.raises(CertificateFileError) as info:
            ssl_credentials(**arguments)
        assert str(info.value) == f"{argument} {path}: {problem}"
        assert (info.value.argument, info.value.path) == (argument, path)
        with pytest.raises(CertificateFileError, match=problem):
            InferenceClient("127.0.0.1:1", **arguments)  # type: ignore[arg-type]
        with pytest.raises(CertificateFileError, match=problem):
            AsyncInferenceClient("127.0.0.1:1", **arguments)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got private_key without certificate_chain"):
        ssl_credentials(private_key=tls_files.client_key)
    with pytest.raises(ValueError, match="credentials or ssl"):
        InferenceClient("127.0.0.1:1", credentials=ssl_credentials(), ssl=True)


def test_cli_unusable_files_exit_2_in_one_line(tmp_path: Path, tls_files: TlsFiles) -> None:
    for argument, path, problem in bad_files(tmp_path, tls_files):
        files = {
            "private_key": tls_files.client_key,
            "certificate_chain": tls_files.client_cert,
            argument: path,
        }
        args = [
            option
            for name, value in files.items()
            for option in (f"--{name.replace('_', '-')}", str(value))
        ]
        result = cli("--url", "127.0.0.1:1", *args)
        assert result.exit_code == 2, result.output
        option = f"--{argument.replace('_', '-')}"
        assert result.output.splitlines() == [f"error: {option} {path}: {problem}"]
    result = cli("--url", "127.0.0.1:1", "--private-key", str(tls_files.client_key))
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        "error: --private-key needs --certificate-chain (a client certificate needs both)"
    ]
