"""The audit stage through a real server: one record per request, every field checked.

Servers on loopback ports serve copies of the ``mlp`` example, driven by tritonclient;
after each server stops (which closes its log with a checkpoint) the records are read
back and compared with what the client sent and received.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import shutil
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from testsupport import start_server
from tritonclient.utils import InferenceServerException

from batchwire.examples.export import export_example
from batchwire.server.repository import ModelRepository
from batchwire.server.repository.fingerprint import config_sha256
from batchwire.telemetry.audit_verify import verify_log

TOKEN = "audit-test-predictor-token"
DENIED_TOKEN = "audit-test-operator-token"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def copy_mlp(repository: Path, name: str, parameters: dict[str, str]) -> None:
    """A copy of the exported mlp example called ``name`` with extra config parameters."""
    source = repository / "mlp"
    shutil.copytree(source, repository / name)
    config = (source / "config.pbtxt").read_text().replace('name: "mlp"', f'name: "{name}"')
    for key, value in parameters.items():
        config += f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
    (repository / name / "config.pbtxt").write_text(config)


def records(folder: Path, kind: str = "request") -> list[dict[str, Any]]:
    import json

    lines = []
    for path in sorted(folder.glob("*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in lines if r["type"] == kind]


def instant(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text[:-1]).replace(tzinfo=timezone.utc)


def mlp_input(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 64), dtype=np.float32)


def infer(
    client: triton.InferenceServerClient,
    model: str,
    data: np.ndarray,
    request_id: str = "",
    token: str = "",
) -> np.ndarray:
    tensor = triton.InferInput("INPUT__0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    headers = {"authorization": f"Bearer {token}"} if token else None
    result = client.infer(model, [tensor], request_id=request_id, headers=headers)
    output = result.as_numpy("OUTPUT__0")
    assert output is not None
    return output


# -- hashes, principals, refusals, signatures ---------------------------------------------


@pytest.fixture(scope="module")
def signed_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server with --auth-config and a signing key; the requests of the tests below,
    sent once, and the log they left after the server stopped."""
    root = tmp_path_factory.mktemp("audit-signed")
    repository = root / "models"
    export_example(repository, "mlp")
    auth = root / "auth.toml"
    auth.write_text(
        f'[[principals]]\nname = "predictor"\ntoken_sha256 = "{sha(TOKEN)}"\n'
        'scopes = ["inference", "metadata"]\n'
        # May infer on another model only: refused by the data plane's Authorize stage.
        f'[[principals]]\nname = "operator"\ntoken_sha256 = "{sha(DENIED_TOKEN)}"\n'
        'scopes = ["inference:text", "metadata"]\n'
    )
    key = Ed25519PrivateKey.generate()
    key_file = root / "audit-key.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    folder = root / "audit"
    server = start_server(
        repository, auth_config=auth, audit_log=folder, audit_signing_key=key_file
    )
    sent = mlp_input(1)
    errors: dict[str, InferenceServerException] = {}
    try:
        client = triton.InferenceServerClient(server.address)
        before = datetime.now(timezone.utc)
        answer = infer(client, "mlp", sent, "req-ok", TOKEN)
        after = datetime.now(timezone.utc)
        for name, call in {
            "shape": lambda: infer(client, "mlp", sent[:, :63].copy(), "req-shape", TOKEN),
            "unknown": lambda: infer(client, "nope", sent, "req-unknown", TOKEN),
            "denied": lambda: infer(client, "mlp", sent, "req-denied", DENIED_TOKEN),
            # Refused by the transport's access check, before the data plane.
            "unauthenticated": lambda: infer(client, "mlp", sent, "req-unauth", "wrong-token"),
        }.items():
            with pytest.raises(InferenceServerException) as caught:
                call()
            errors[name] = caught.value
        # A stream the access check refuses: refused before its first message.
        streamed: list[Any] = []
        client.start_stream(
            callback=lambda result, error: streamed.append(error),
            headers={"authorization": "Bearer wrong-token"},
        )
        tensor = triton.InferInput("INPUT__0", [1, 64], "FP32")
        tensor.set_data_from_numpy(sent)
        # The refusal may end the stream before this message is even sent.
        with contextlib.suppress(InferenceServerException):
            client.async_stream_infer("mlp", [tensor], request_id="req-stream")
        client.stop_stream()
        errors["stream"] = streamed[0]
        client.close()
    finally:
        server.stop()
    yield {
        "folder": folder,
        "repository": repository,
        "sent": sent,
        "answer": answer,
        "errors": errors,
        "window": (before, after),
        "public_key": key.public_key(),
    }


def test_a_successful_request_is_recorded_field_by_field(signed_log: dict[str, Any]) -> None:
    (record,) = [r for r in records(signed_log["folder"]) if r["request_id"] == "req-ok"]
    repository: Path = signed_log["repository"]
    version = ModelRepository(repository).discover_model("mlp").versions[0]
    model_file = repository / "mlp" / "1" / "model.pt"
    sent, answer = signed_log["sent"], signed_log["answer"]
    before, after = signed_log["window"]
    assert record["model"] == "mlp"
    assert record["version"] == "1"
    assert record["model_sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert record["config_sha256"] == config_sha256(version.config)
    assert record["principal"] == "predictor"
    assert record["code"] == "OK"
    assert record["message"] == ""
    assert record["inputs"] == [
        {
            "name": "INPUT__0",
            "datatype": "FP32",
            "shape": [1, 64],
            "sha256": hashlib.sha256(sent.tobytes()).hexdigest(),
        }
    ]
    assert record["outputs"] == [
        {
            "name": "OUTPUT__0",
            "datatype": "FP32",
            "shape": [1, 10],
            "sha256": hashlib.sha256(answer.tobytes()).hexdigest(),
        }
    ]
    assert isinstance(record["batch_id"], int) and record["batch_id"] >= 1
    assert record["queue_us"] >= 0 and record["compute_us"] > 0
    assert record["cached"] is False
    received, answered = instant(record["received"]), instant(record["answered"])
    # Wall-clock instants, inside the client's own window around the call.
    assert before <= received <= answered <= after


def test_refused_requests_are_recorded_with_their_status(signed_log: dict[str, Any]) -> None:
    by_id = {r["request_id"]: r for r in records(signed_log["folder"])}
    errors = signed_log["errors"]
    shape = by_id["req-shape"]
    assert (
        shape["code"] == "INVALID_ARGUMENT" == errors["shape"].status().removeprefix("StatusCode.")
    )
    assert shape["message"] == errors["shape"].message()
    assert shape["version"] == "1"
    assert shape["batch_id"] is None and shape["outputs"] == []
    unknown = by_id["req-unknown"]
    assert (unknown["code"], unknown["model"], unknown["version"]) == ("NOT_FOUND", "nope", "")
    assert unknown["model_sha256"] == "" and unknown["inputs"] == []
    denied = by_id["req-denied"]
    assert (denied["code"], denied["principal"]) == ("PERMISSION_DENIED", "operator")
    assert denied["message"] == errors["denied"].message()
    unauthenticated = by_id["req-unauth"]
    assert (unauthenticated["code"], unauthenticated["model"]) == ("UNAUTHENTICATED", "mlp")
    assert unauthenticated["message"] == errors["unauthenticated"].message()
    assert (unauthenticated["principal"], unauthenticated["version"]) == ("", "")
    assert unauthenticated["inputs"] == [] and unauthenticated["batch_id"] is None
    stream = by_id[""]  # the refused stream: no message was read, so no id and no model
    assert (stream["code"], stream["model"]) == ("UNAUTHENTICATED", "")
    assert stream["message"] == errors["stream"].message()
    assert len(by_id) == 6  # one record per request, no more


def test_the_log_verifies_against_the_signing_key(signed_log: dict[str, Any]) -> None:
    report = verify_log(signed_log["folder"], signed_log["public_key"])
    assert report.ok, report.problems
    assert report.records >= 4
    assert report.signed >= 1  # at least the checkpoint closing the log at shutdown
    other = Ed25519PrivateKey.generate().public_key()
    assert {p.kind for p in verify_log(signed_log["folder"], other).problems} == {
        "signature invalid"
    }


# -- payloads, redaction, sampling ----------------------------------------------------------


@pytest.fixture(scope="module")
def payload_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("audit-payloads")
    repository = root / "models"
    export_example(repository, "mlp")
    copy_mlp(repository, "mlp_redacted", {"batchwire.audit_redact": "OUTPUT__0"})
    copy_mlp(repository, "mlp_half", {"batchwire.audit_sample": "0.5"})
    folder = root / "audit"
    server = start_server(repository, audit_log=folder, audit_payloads=True)
    sent = mlp_input(2)
    try:
        client = triton.InferenceServerClient(server.address)
        answers = {
            "mlp": infer(client, "mlp", sent, "plain"),
            "mlp_redacted": infer(client, "mlp_redacted", sent, "redacted"),
        }
        # 200 distinct requests, each sent twice (a retry: same id, same bytes).
        for seed in range(200):
            data = mlp_input(1000 + seed)
            for _ in range(2):
                infer(client, "mlp_half", data, f"half-{seed}")
        for index in range(10):  # failures: recorded whatever the share
            with pytest.raises(InferenceServerException):
                infer(client, "mlp_half", np.zeros((1, 65), np.float32), f"bad-{index}")
        client.close()
    finally:
        server.stop()
    yield {"folder": folder, "sent": sent, "answers": answers}


def test_payloads_are_the_tensors_bytes_except_redacted_ones(payload_log: dict[str, Any]) -> None:
    by_id = {r["request_id"]: r for r in records(payload_log["folder"])}
    sent, answers = payload_log["sent"], payload_log["answers"]
    plain = by_id["plain"]
    assert base64.b64decode(plain["inputs"][0]["payload"]) == sent.tobytes()
    assert base64.b64decode(plain["outputs"][0]["payload"]) == answers["mlp"].tobytes()
    redacted = by_id["redacted"]
    assert base64.b64decode(redacted["inputs"][0]["payload"]) == sent.tobytes()
    output = redacted["outputs"][0]
    assert output["payload"] is None and output["redacted"] is True
    # The hash is kept: an auditor can still match a known answer.
    expected = hashlib.sha256(answers["mlp_redacted"].tobytes()).hexdigest()
    assert output["sha256"] == expected


def test_sampling_keeps_a_share_decided_per_request_and_every_failure(
    payload_log: dict[str, Any],
) -> None:
    half = [r for r in records(payload_log["folder"]) if r["model"] == "mlp_half"]
    per_request: dict[str, int] = {}
    for record in half:
        if record["code"] == "OK":
            per_request[record["request_id"]] = per_request.get(record["request_id"], 0) + 1
    # A retry gets the same decision: both sends recorded, or neither.
    assert set(per_request.values()) == {2}
    # A share of 0.5 of 200: binomial, 4.2 standard deviations either side.
    assert 70 <= len(per_request) <= 130
    failures = [r["request_id"] for r in half if r["code"] != "OK"]
    assert sorted(failures) == sorted(f"bad-{i}" for i in range(10))


def test_a_bad_audit_parameter_fails_the_models_load(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    export_example(repository, "mlp")
    copy_mlp(repository, "mlp_bad", {"batchwire.audit_sample": "1.5"})
    server = start_server(repository)
    try:
        client = triton.InferenceServerClient(server.address)
        rows = {row.name: row for row in client.get_model_repository_index().models}
        assert rows["mlp_bad"].state == "UNAVAILABLE"
        assert "batchwire.audit_sample" in rows["mlp_bad"].reason
        assert "expected a share of requests from 0 to 1, got 1.5" in rows["mlp_bad"].reason
        client.close()
    finally:
        server.stop()


def test_an_audit_directory_that_cannot_be_made_stops_startup(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RuntimeError, match=r"failed to start: --audit-log: .*file"):
        start_server(None, audit_log=blocker / "audit")


# -- a failing disk -------------------------------------------------------------------------


def scrape(url: str, name: str) -> float:
    import re
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


def test_a_failing_disk_under_drop_keeps_serving_and_counts_every_record(tmp_path: Path) -> None:
    """The server (and its audit writer process) may write files of 64 KiB at most
    (``ulimit -f``; SIGXFSZ ignored, so writes past it fail with EFBIG, as a full disk
    fails them with ENOSPC): every request is still answered, and every record is
    either written or counted as dropped, in a log that verifies."""
    from testsupport import wait_until

    from batchwire.serve_process import ServerProcess

    repository = tmp_path / "models"
    export_example(repository, "mlp")
    folder = tmp_path / "audit"
    server = ServerProcess(
        repository, "--audit-log", str(folder), "--audit-queue-full", "drop", metrics=True
    )
    server.command = [
        "bash",
        "-c",
        'trap "" XFSZ; ulimit -f 64; exec "$@"',
        "bash",
        *server.command,
    ]
    sent = 400
    server.start()
    try:
        client = triton.InferenceServerClient(server.address)
        for seed in range(sent):
            infer(client, "mlp", mlp_input(seed), f"disk-{seed}")
        client.close()
        url = server.metrics_url
        assert url is not None

        def settled() -> bool:
            accounted = scrape(url, "batchwire_audit_records_written_total") + scrape(
                url, "batchwire_audit_dropped_total"
            )
            return accounted == sent

        wait_until(settled, "every record written or counted as dropped")
        assert scrape(url, "batchwire_audit_write_errors_total") >= 1
        written = scrape(url, "batchwire_audit_records_written_total")
        assert 0 < written < sent
    finally:
        server.stop()
    # Files cut at 64 KiB end with a torn line: read_records skips those, as verify does.
    from batchwire.telemetry.audit_verify import read_records

    ids = [r["request_id"] for r in read_records(folder)]
    assert len(ids) == written and len(set(ids)) == len(ids)
    assert all(i.startswith("disk-") for i in ids)
    report = verify_log(folder)
    assert report.ok, report.problems
