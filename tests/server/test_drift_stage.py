"""The drift stage through a real server: live traffic counted into the shipped profile.

The exported ``mlp`` example ships ``1/drift_profile.json``; a copy of it receives the
same kind of data with one feature shifted. The PSI the server exports is compared
with a window filled offline from the very arrays the client sent.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from testsupport import free_port, labels, metric_samples, start_server, wait_until

from batchwire.examples.export import export_example
from batchwire.examples.reference import reference_outputs
from batchwire.telemetry.drift_profile import PROFILE_FILE, load_profile
from batchwire.telemetry.drift_window import DriftWindow

BATCH = 8
REQUESTS = 150  # 1200 items: past the window's minimum of 1000
SHIFTED_FEATURE = 3


def send(client: triton.InferenceServerClient, model: str, data: np.ndarray) -> list[np.ndarray]:
    answers = []
    for start in range(0, len(data), BATCH):
        part = data[start : start + BATCH]
        tensor = triton.InferInput("INPUT__0", list(part.shape), "FP32")
        tensor.set_data_from_numpy(part)
        output = client.infer(model, [tensor]).as_numpy("OUTPUT__0")
        assert output is not None
        answers.append(output)
    return answers


def psi_by_feature(url: str, model: str, tensor: str) -> dict[str, float]:
    return {
        dict(key)["feature"]: value
        for key, value in metric_samples(url, "batchwire_drift_psi").items()
        if dict(key)["model"] == model and dict(key)["tensor"] == tensor
    }


def test_psi_stays_low_for_reference_like_data_and_rises_for_one_shifted_feature(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repository = tmp_path / "models"
    export_example(repository, "mlp")
    assert (repository / "mlp" / "1" / PROFILE_FILE).is_file()
    shutil.copytree(repository / "mlp", repository / "mlp_shifted")
    config = repository / "mlp_shifted" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "mlp"', 'name: "mlp_shifted"'))
    rng = np.random.default_rng(7)
    like = rng.standard_normal((BATCH * REQUESTS, 64), dtype=np.float32)
    shifted = rng.standard_normal((BATCH * REQUESTS, 64), dtype=np.float32)
    shifted[:, SHIFTED_FEATURE] += 1.0
    caplog.set_level(logging.INFO, logger="batchwire")
    server = start_server(repository, metrics_port=free_port())
    try:
        client = triton.InferenceServerClient(server.address)
        send(client, "mlp", like)
        send(client, "mlp_shifted", shifted)
        client.close()
        url = server.metrics_url

        def counted() -> bool:
            window = metric_samples(url, "batchwire_drift_window_requests")
            return all(
                window.get(labels(model=m, version="1")) == REQUESTS for m in ("mlp", "mlp_shifted")
            )

        wait_until(counted, "both windows to hold every request")
        like_psi = psi_by_feature(url, "mlp", "INPUT__0")
        shifted_psi = psi_by_feature(url, "mlp_shifted", "INPUT__0")
        states = metric_samples(url, "batchwire_drift_state")
        bins = metric_samples(url, "batchwire_drift_bin_count")
    finally:
        server.stop()
    assert sorted(like_psi, key=int) == [str(i) for i in range(64)]
    assert max(like_psi.values()) < 0.1
    assert shifted_psi[str(SHIFTED_FEATURE)] > 0.25
    assert max(v for f, v in shifted_psi.items() if f != str(SHIFTED_FEATURE)) < 0.1
    assert states[labels(model="mlp", version="1", tensor="INPUT__0")] == 0  # ok
    assert states[labels(model="mlp_shifted", version="1", tensor="INPUT__0")] == 2  # alert
    # Exactly what a window fed offline with the same arrays says.
    profile = load_profile(repository / "mlp" / "1" / PROFILE_FILE)
    offline = DriftWindow(profile)
    parts = [like[i : i + BATCH] for i in range(0, len(like), BATCH)]
    outputs = [reference_outputs("mlp", {"INPUT__0": p})["OUTPUT__0"] for p in parts]
    offline.add({"INPUT__0": parts, "OUTPUT__0": outputs}, REQUESTS)
    expected = offline.snapshot()
    for index, feature in enumerate(expected["INPUT__0"].features):
        assert like_psi[feature] == pytest.approx(float(expected["INPUT__0"].psi[index]), abs=1e-9)
        for b, count in enumerate(expected["INPUT__0"].counts[index].tolist()):
            key = labels(model="mlp", version="1", tensor="INPUT__0", feature=feature, bin=str(b))
            assert bins[key] == count
    top1 = expected["OUTPUT__0"]
    assert (
        states[labels(model="mlp", version="1", tensor="OUTPUT__0")]
        == {
            "ok": 0,
            "warning": 1,
            "alert": 2,
        }[top1.state]
    )
    alerts = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "drift of model 'mlp_shifted'" in r.getMessage()
    ]
    assert alerts == [
        "drift of model 'mlp_shifted' version 1 tensor 'INPUT__0': ok -> alert "
        "(PSI thresholds 0.1/0.25)"
    ]


def test_drift_statistics_off_and_a_broken_profile_leave_serving_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repository = tmp_path / "models"
    export_example(repository, "mlp")
    shutil.copytree(repository / "mlp", repository / "mlp_broken")
    config = repository / "mlp_broken" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "mlp"', 'name: "mlp_broken"'))
    (repository / "mlp_broken" / "1" / PROFILE_FILE).write_text("{not json")
    data = np.zeros((BATCH, 64), np.float32)
    caplog.set_level(logging.INFO, logger="batchwire")
    for enabled in (True, False):
        server = start_server(repository, metrics_port=free_port(), drift_statistics=enabled)
        try:
            client = triton.InferenceServerClient(server.address)
            for model in ("mlp", "mlp_broken"):
                send(client, model, data)  # served either way
            client.close()
            windows = metric_samples(server.metrics_url, "batchwire_drift_window_requests")
        finally:
            server.stop()
        if enabled:
            # The broken profile's model has no window; mlp counts once its chunk is in.
            assert [dict(k)["model"] for k in windows] == ["mlp"]
        else:
            assert windows == {}
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(
        "model 'mlp_broken' version 1 is served without drift statistics" in m for m in errors
    ), errors
