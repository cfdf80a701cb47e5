"""TLS and mutual TLS on the gRPC port, with Triton's ``--grpc-use-ssl*`` options.

Certificates are made per test module by tests/certificates.py into tmp folders;
servers listen on 127.0.0.1, port 0. What is checked:

- TLS: our client and tritonclient infer over TLS trusting the test CA; a plaintext
  client and one trusting another CA are refused (UNAVAILABLE) and the server serves on.
- Mutual TLS: a client certificate from the CA is let in; none, or one from another CA,
  or an expired one, is refused.
- Rotation: the files replaced while a client keeps calling on its connection: none of
  its calls fails, new connections get the new certificate. A replacement that cannot
  be used (key of another pair, truncated, expired) keeps the certificate in use and is
  logged once, naming the files; the next good one is taken. No key in any log line.
- Start-up: each bad file stops ``batchwire serve`` with status 1 and one line naming
  the option, the file and the problem; an inconsistent command line is a usage error
  (status 2). Triton's spellings (``--grpc-use-ssl=true``, bare, environment) all serve.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from certificates import Authority, Issued, days_ago, days_from_now, key_pem, new_key, write_pem
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from test_cli_startup import one_line, serve
from testsupport import start_server, write_python_model

from batchwire.clients import InferenceClient
from batchwire.clients.errors import InferenceServerError
from batchwire.serve_process import ServerProcess, log_tail, terminate
from batchwire.server.app import BatchwireServer, ServerThread, StartupError
from batchwire.server.settings import ServerSettings

DOUBLE_CONFIG = """
name: "double"
backend: "python"
max_batch_size: 8
input { name: "X" data_type: TYPE_FP32 dims: [ 1 ] }
output { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }
"""

DOUBLE_SOURCE = '''
class BatchwireModel:
    """Y = 2 X."""

    def load(self, spec, device, instance_index):
        pass

    def execute(self, inputs):
        return {"Y": inputs["X"] * 2}
'''

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tls-repo")
    write_python_model(root, "double", DOUBLE_CONFIG, DOUBLE_SOURCE)
    return root


@pytest.fixture(scope="module")
def ca() -> Authority:
    return Authority.create("batchwire test CA")


@pytest.fixture(scope="module")
def other_ca() -> Authority:
    return Authority.create("some other CA")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory, ca: Authority) -> dict[str, Path]:
    """The server's certificate and key and the CA's certificate, as PEM files."""
    folder = tmp_path_factory.mktemp("pki")
    cert, key = ca.server_certificate().write(folder, "server")
    return {"cert": cert, "key": key, "ca": ca.write(folder / "ca.crt")}


@pytest.fixture(scope="module")
def tls_server(repository: Path, pki: dict[str, Path]) -> Iterator[ServerThread]:
    server = start_server(
        repository, grpc_use_ssl=True, grpc_server_cert=pki["cert"], grpc_server_key=pki["key"]
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(repository: Path, pki: dict[str, Path]) -> Iterator[ServerThread]:
    server = start_server(
        repository,
        grpc_use_ssl_mutual=True,
        grpc_server_cert=pki["cert"],
        grpc_server_key=pki["key"],
        grpc_root_cert=pki["ca"],
    )
    yield server
    server.stop()


def credentials(trust: Authority, client: Issued | None = None) -> grpc.ChannelCredentials:
    """Channel credentials trusting only ``trust``, showing ``client``'s certificate if given."""
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=trust.cert_pem)
    return grpc.ssl_channel_credentials(
        root_certificates=trust.cert_pem,
        private_key=client.key_pem,
        certificate_chain=client.cert_pem,
    )


def infer_double(client: InferenceClient) -> None:
    x = np.array([[1.5], [-2.0]], dtype=np.float32)
    np.testing.assert_array_equal(client.infer("double", {"X": x}).outputs["Y"], x * 2)


def infer_on_new_channel(address: str, creds: grpc.ChannelCredentials | None) -> None:
    """One inference on a channel of its own (a new connection, hence a new handshake)."""
    with InferenceClient(address, credentials=creds, timeout=15) as client:
        infer_double(client)


def refused_code(address: str, creds: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """The status of an inference on a new channel that the server must refuse."""
    with pytest.raises(InferenceServerError) as refused:
        infer_on_new_channel(address, creds)
    return refused.value.status_code


def port_of(server: ServerThread) -> int:
    assert server.server.port is not None
    return server.server.port


def served_serial(server: ServerThread) -> int:
    """The serial number of the certificate a new TLS connection to ``server`` is shown."""
    pem = ssl.get_server_certificate(("127.0.0.1", port_of(server)), timeout=15)
    return x509.load_pem_x509_certificate(pem.encode()).serial_number


def replace_pair(cert: Path, key: Path, cert_pem: bytes, key_pem: bytes) -> None:
    """Replace both files the way rotation tools do: write aside, then rename over."""
    for path, data in ((key, key_pem), (cert, cert_pem)):
        aside = path.with_name(path.name + ".new")
        aside.write_bytes(data)
        os.replace(aside, path)


# -- TLS ---------------------------------------------------------------------------


def test_tls_our_client_infers_trusting_the_ca(tls_server: ServerThread, ca: Authority) -> None:
    with InferenceClient(tls_server.address, credentials=credentials(ca), timeout=15) as client:
        assert client.server_ready()
        infer_double(client)


def test_tls_tritonclient_infers_with_the_ca_as_root(
    tls_server: ServerThread, pki: dict[str, Path]
) -> None:
    client = triton.InferenceServerClient(
        tls_server.address, ssl=True, root_certificates=str(pki["ca"])
    )
    try:
        x = np.array([[3.0]], dtype=np.float32)
        request = triton.InferInput("X", [1, 1], "FP32")
        request.set_data_from_numpy(x)
        result = client.infer("double", [request], client_timeout=15)
        np.testing.assert_array_equal(result.as_numpy("Y"), x * 2)
    finally:
        client.close()


def test_tls_a_plaintext_client_is_refused_and_the_server_serves_on(
    tls_server: ServerThread, ca: Authority
) -> None:
    assert refused_code(tls_server.address, None) == UNAVAILABLE
    infer_on_new_channel(tls_server.address, credentials(ca))


def test_tls_a_client_trusting_another_ca_is_refused(
    tls_server: ServerThread, ca: Authority, other_ca: Authority
) -> None:
    assert refused_code(tls_server.address, credentials(other_ca)) == UNAVAILABLE
    infer_on_new_channel(tls_server.address, credentials(ca))


# -- mutual TLS --------------------------------------------------------------------


def test_mtls_a_client_certificate_from_the_ca_is_let_in(
    mtls_server: ServerThread, ca: Authority
) -> None:
    client = ca.client_certificate("alice", dns_names=("alice.example",))
    infer_on_new_channel(mtls_server.address, credentials(ca, client))


def test_mtls_tritonclient_with_its_certificate_files_infers(
    mtls_server: ServerThread, ca: Authority, pki: dict[str, Path], tmp_path: Path
) -> None:
    cert, key = ca.client_certificate("bob").write(tmp_path, "bob")
    client = triton.InferenceServerClient(
        mtls_server.address,
        ssl=True,
        root_certificates=str(pki["ca"]),
        private_key=str(key),
        certificate_chain=str(cert),
    )
    try:
        assert client.is_server_ready(client_timeout=15)
    finally:
        client.close()


@pytest.mark.parametrize("who", ["no certificate", "another CA", "expired"])
def test_mtls_refuses_a_client_without_a_valid_certificate(
    mtls_server: ServerThread, ca: Authority, other_ca: Authority, who: str
) -> None:
    client = {
        "no certificate": None,
        "another CA": other_ca.client_certificate("mallory"),
        "expired": ca.client_certificate("late", not_before=days_ago(10), not_after=days_ago(1)),
    }[who]
    assert refused_code(mtls_server.address, credentials(ca, client)) == UNAVAILABLE
    infer_on_new_channel(mtls_server.address, credentials(ca, ca.client_certificate("alice")))


# -- rotation ----------------------------------------------------------------------


class CallingLoop:
    """Calls ``double`` in a loop on one client (one connection) until stopped."""

    def __init__(self, address: str, creds: grpc.ChannelCredentials) -> None:
        self.client = InferenceClient(address, credentials=creds, timeout=15)
        self.calls = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._progress = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="calling-loop", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                infer_double(self.client)
            except Exception as exc:  # recorded: the test asserts there were none
                self.failures.append(repr(exc))
            with self._progress:
                self.calls += 1
                self._progress.notify_all()

    def __enter__(self) -> CallingLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.client.close()

    def wait_for(self, more: int) -> None:
        """Wait until ``more`` further calls ended (a bound on the wait, not a timing check)."""
        with self._progress:
            target = self.calls + more
            assert self._progress.wait_for(lambda: self.calls >= target, timeout=60), (
                f"the loop made {self.calls} calls, waited for {target}"
            )


def test_rotation_keeps_calls_going_and_new_connections_get_the_new_certificate(
    repository: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="batchwire.server.tls")
    old_ca, new_ca = Authority.create("old CA"), Authority.create("new CA")
    first, second = old_ca.server_certificate(), new_ca.server_certificate()
    cert, key = first.write(tmp_path, "server")
    server = start_server(repository, grpc_use_ssl=True, grpc_server_cert=cert, grpc_server_key=key)
    try:
        assert served_serial(server) == first.serial
        assert refused_code(server.address, credentials(new_ca)) == UNAVAILABLE
        with CallingLoop(server.address, credentials(old_ca)) as loop:
            loop.wait_for(5)
            replace_pair(cert, key, second.cert_pem, second.key_pem)
            infer_on_new_channel(server.address, credentials(new_ca))
            assert served_serial(server) == second.serial
            loop.wait_for(20)
        assert loop.failures == []
        # New connections trusting only the old CA now fail: the swap is real.
        assert refused_code(server.address, credentials(old_ca)) == UNAVAILABLE
    finally:
        server.stop()
    taken = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(f"serial {second.serial:x}" in line for line in taken), taken
    assert "PRIVATE KEY" not in caplog.text


def truncated(issued: Issued) -> tuple[bytes, bytes]:
    return issued.cert_pem[: len(issued.cert_pem) // 2], issued.key_pem


def key_of_another_pair(issued: Issued) -> tuple[bytes, bytes]:
    return issued.cert_pem, key_pem(new_key())


@pytest.mark.parametrize(
    ("broken", "problem"),
    [
        ("key of another pair", "does not match the certificate in"),
        ("half-written certificate", "invalid PEM certificate"),
        ("expired certificate", "the certificate expired on"),
    ],
)
def test_rotation_to_unusable_files_keeps_the_certificate_in_use_and_logs_once(
    repository: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    ca: Authority,
    broken: str,
    problem: str,
) -> None:
    caplog.set_level(logging.INFO, logger="batchwire.server.tls")
    first = ca.server_certificate()
    cert, key = first.write(tmp_path, "server")
    server = start_server(repository, grpc_use_ssl=True, grpc_server_cert=cert, grpc_server_key=key)
    try:
        if broken == "key of another pair":
            cert_pem, bad_key = key_of_another_pair(ca.server_certificate())
        elif broken == "half-written certificate":
            cert_pem, bad_key = truncated(ca.server_certificate())
        else:
            expired = ca.server_certificate(not_before=days_ago(30), not_after=days_ago(2))
            cert_pem, bad_key = expired.cert_pem, expired.key_pem
        replace_pair(cert, key, cert_pem, bad_key)
        for _ in range(3):  # three new connections, one error line
            assert served_serial(server) == first.serial
        infer_on_new_channel(server.address, credentials(ca))
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, errors
        assert problem in errors[0]
        assert f"serial {first.serial:x}" in errors[0]  # says which certificate stays
        # Files that are whole again are taken on the next connection.
        third = ca.server_certificate()
        replace_pair(cert, key, third.cert_pem, third.key_pem)
        assert served_serial(server) == third.serial
    finally:
        server.stop()
    assert "PRIVATE KEY" not in caplog.text


# -- start-up checks ---------------------------------------------------------------


def start_fails(settings: ServerSettings) -> str:
    """The StartupError message of starting a server with ``settings``."""

    async def attempt() -> str:
        server = BatchwireServer(settings)
        try:
            with pytest.raises(StartupError) as failed:
                await server.start()
        finally:
            await server.stop(grace=0)
        return str(failed.value)

    return asyncio.run(attempt())


def tls_settings(cert: Path, key: Path, **more: object) -> ServerSettings:
    return ServerSettings(
        host="127.0.0.1",
        port=0,
        grpc_use_ssl=True,
        grpc_server_cert=cert,
        grpc_server_key=key,
        **more,  # type: ignore[arg-type]
    )


def test_start_names_each_unusable_file(tmp_path: Path, ca: Authority) -> None:
    """Every problem the start-up check knows, through BatchwireServer.start()."""
    good = ca.server_certificate()
    cert, key = good.write(tmp_path, "good")
    not_pem = write_pem(tmp_path / "notes.txt", b"just some text\n")
    empty = write_pem(tmp_path / "empty.pem", b"")
    encrypted = write_pem(
        tmp_path / "encrypted.key",
        good.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ),
    )
    future = ca.server_certificate(not_before=days_from_now(2), not_after=days_from_now(30))
    future_cert, future_key = future.write(tmp_path, "future")
    old_ca = Authority.create("old CA")
    expired_root = write_pem(
        tmp_path / "expired-ca.crt",
        old_ca.issue("old CA leaf", not_before=days_ago(9), not_after=days_ago(1)).cert_pem,
    )
    cases = [
        (tls_settings(tmp_path / "none.crt", key), f"--grpc-server-cert {tmp_path / 'none.crt'}: no such file"),
        (tls_settings(cert, tmp_path), f"--grpc-server-key {tmp_path}: is a directory, not a file"),
        (tls_settings(empty, key), f"--grpc-server-cert {empty}: is empty"),
        (tls_settings(not_pem, key), f"--grpc-server-cert {not_pem}: holds no PEM certificate"),
        (tls_settings(key, key), f"--grpc-server-cert {key}: holds no PEM certificate (it holds a private key)"),
        (tls_settings(cert, cert), f"--grpc-server-key {cert}: holds no PEM private key (it holds a certificate)"),
        (tls_settings(cert, encrypted), f"--grpc-server-key {encrypted}: the key is encrypted; gRPC needs it without a passphrase"),
        (
            tls_settings(future_cert, future_key),
            f"--grpc-server-cert {future_cert}: the certificate is not valid before "
            f"{future.certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC",
        ),
        (
            tls_settings(cert, key, grpc_use_ssl_mutual=True, grpc_root_cert=not_pem),
            f"--grpc-root-cert {not_pem}: holds no PEM certificate",
        ),
        (
            tls_settings(cert, key, grpc_use_ssl_mutual=True, grpc_root_cert=expired_root),
            f"--grpc-root-cert {expired_root}: the CA certificate expired on ",
        ),
    ]  # fmt: skip
    for settings, expected in cases:
        assert start_fails(settings).startswith(expected)


def test_settings_refuse_tls_without_its_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--grpc-use-ssl needs --grpc-server-cert"):
        ServerSettings(grpc_use_ssl=True)
    with pytest.raises(ValueError, match="--grpc-use-ssl needs --grpc-server-key"):
        ServerSettings(grpc_use_ssl=True, grpc_server_cert=tmp_path / "c")
    with pytest.raises(ValueError, match="--grpc-use-ssl-mutual needs --grpc-root-cert"):
        ServerSettings(
            grpc_use_ssl_mutual=True,
            grpc_server_cert=tmp_path / "c",
            grpc_server_key=tmp_path / "k",
        )


CLI_PORTS = ("--host", "127.0.0.1", "--port", "0", "--metrics-port", "0")


def test_serve_with_a_missing_certificate_is_one_line(tmp_path: Path, pki: dict[str, Path]) -> None:
    missing = tmp_path / "missing.crt"
    completed = serve(
        *CLI_PORTS, "--grpc-use-ssl=true", f"--grpc-server-cert={missing}",
        f"--grpc-server-key={pki['key']}",
    )  # fmt: skip
    assert completed.returncode == 1, completed.stderr
    assert one_line(completed) == f"batchwire: --grpc-server-cert {missing}: no such file"


def test_serve_with_a_key_of_another_certificate_is_one_line(
    tmp_path: Path, ca: Authority, pki: dict[str, Path]
) -> None:
    _, other_key = ca.server_certificate().write(tmp_path, "other")
    completed = serve(
        *CLI_PORTS, "--grpc-use-ssl", "--grpc-server-cert", str(pki["cert"]),
        "--grpc-server-key", str(other_key),
    )  # fmt: skip
    assert completed.returncode == 1, completed.stderr
    assert one_line(completed) == (
        f"batchwire: --grpc-server-key {other_key}: does not match the certificate in {pki['cert']}"
    )


def test_serve_with_an_expired_certificate_is_one_line_with_the_date(
    tmp_path: Path, ca: Authority
) -> None:
    expired = ca.server_certificate(not_before=days_ago(30), not_after=days_ago(3))
    cert, key = expired.write(tmp_path, "expired")
    completed = serve(
        *CLI_PORTS, env={
            "BATCHWIRE_GRPC_USE_SSL": "true",
            "BATCHWIRE_GRPC_SERVER_CERT": str(cert),
            "BATCHWIRE_GRPC_SERVER_KEY": str(key),
        },
    )  # fmt: skip
    assert completed.returncode == 1, completed.stderr
    end = expired.certificate.not_valid_after_utc
    assert one_line(completed) == (
        f"batchwire: --grpc-server-cert {cert}: the certificate expired on "
        f"{end:%Y-%m-%d %H:%M:%S} UTC"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_serve_with_an_unreadable_key_is_one_line(tmp_path: Path, ca: Authority) -> None:
    cert, key = ca.server_certificate().write(tmp_path, "server")
    key.chmod(0)
    try:
        completed = serve(
            *CLI_PORTS, "--grpc-use-ssl=1", "--grpc-server-cert", str(cert),
            "--grpc-server-key", str(key),
        )  # fmt: skip
    finally:
        key.chmod(0o600)
    assert completed.returncode == 1, completed.stderr
    assert one_line(completed) == (
        f"batchwire: --grpc-server-key {key}: cannot read it: permission denied"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--grpc-use-ssl"], "--grpc-use-ssl needs --grpc-server-cert"),
        (["--grpc-use-ssl=true", "--grpc-server-cert=c.pem"], "--grpc-use-ssl needs --grpc-server-key"),
        (
            ["--grpc-use-ssl-mutual", "true", "--grpc-server-cert", "c", "--grpc-server-key", "k"],
            "--grpc-use-ssl-mutual needs --grpc-root-cert",
        ),
        (["--grpc-use-ssl=maybe"], "Invalid value for '--grpc-use-ssl': expected true or false"),
    ],
)  # fmt: skip
def test_serve_with_tls_options_that_do_not_fit_is_a_usage_error(
    args: list[str], expected: str
) -> None:
    completed = serve(*CLI_PORTS, *args)
    assert completed.returncode == 2, completed.stderr
    errors = [line for line in completed.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, completed.stderr
    assert expected in errors[0]
    assert "Traceback" not in completed.stderr


def wait_ready_over_tls(
    process: subprocess.Popen[bytes], address: str, creds: grpc.ChannelCredentials, log: Path
) -> None:
    """Poll ServerReady over TLS until it says ready; fail when the process exits first."""
    with InferenceClient(address, credentials=creds, timeout=2) as client:
        for _ in range(600):
            assert process.poll() is None, (
                f"serve exited with {process.returncode}:\n{log_tail(log)}"
            )
            try:
                if client.server_ready():
                    return
            except InferenceServerError:
                pass
            threading.Event().wait(0.2)
    pytest.fail(f"serve never became ready over TLS:\n{log_tail(log)}")


@pytest.mark.parametrize("spelling", ["triton", "bare", "environment", "mutual"])
def test_serve_command_line_spellings_serve_tls(
    spelling: str,
    repository: Path,
    pki: dict[str, Path],
    ca: Authority,
    tmp_path: Path,
) -> None:
    cert, key, root = str(pki["cert"]), str(pki["key"]), str(pki["ca"])
    args: list[str] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHWIRE_")}
    client = None
    if spelling == "triton":
        args = ["--grpc-use-ssl=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}"]
    elif spelling == "bare":
        args = ["--grpc-use-ssl", "--grpc-server-cert", cert, "--grpc-server-key", key]
    elif spelling == "environment":
        env |= {
            "BATCHWIRE_GRPC_USE_SSL": "1",
            "BATCHWIRE_GRPC_SERVER_CERT": cert,
            "BATCHWIRE_GRPC_SERVER_KEY": key,
        }
    else:
        args = [
            "--grpc-use-ssl-mutual=true", f"--grpc-server-cert={cert}",
            f"--grpc-server-key={key}", f"--grpc-root-cert={root}",
        ]  # fmt: skip
        client = ca.client_certificate("carol")
    # ServerProcess lays out the command line; its own start() waits in plaintext, so the
    # process is started and awaited here over TLS.
    server = ServerProcess(repository, *args)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(server.command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready_over_tls(process, server.address, credentials(ca, client), log)
        infer_on_new_channel(server.address, credentials(ca, client))
        assert refused_code(server.address, None) == UNAVAILABLE
    finally:
        terminate(process, 30)
    assert process.returncode == 0, log_tail(log)
