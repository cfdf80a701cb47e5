"""The built-in examples: export, load through the repository, compare with the reference."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from batchwire.examples import (
    EXAMPLE_NAMES,
    build_model,
    config_text,
    export_examples,
    reference_outputs,
    sample_inputs,
)
from batchwire.server.repository import ModelRepository


def test_export_layout_and_specs(examples_repository: Path) -> None:
    repo_root = examples_repository  # export_examples(root): every example
    entries = {e.name: e for e in ModelRepository(repo_root).discover()}
    assert sorted(entries) == sorted(EXAMPLE_NAMES)
    for name, entry in entries.items():
        assert entry.ok, entry.error
        assert (repo_root / name / "config.pbtxt").read_text() == config_text(name)
        assert (repo_root / name / "1" / "model.pt").is_file()
        spec = entry.versions[0].spec
        assert spec.platform == "pytorch_libtorch"
        assert spec.batching is not None
    assert entries["mlp"].versions[0].spec.max_batch_size == 64
    assert entries["cnn"].versions[0].spec.batching.max_queue_delay_us == 5000
    text = entries["text"].versions[0].spec
    assert text.inputs[0].allow_ragged_batch and text.inputs[0].dims == (-1,)
    assert text.batching.ragged_pad_value == 0.0


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_served_outputs_match_reference(
    examples_repository: Path, run_exported: Callable[..., dict[str, np.ndarray]], name: str
) -> None:
    inputs = sample_inputs(name, batch_size=3, seed=7)
    served = run_exported(examples_repository, name, inputs)
    expected = reference_outputs(name, inputs)
    assert list(served) == list(expected)
    for key, value in expected.items():
        assert served[key].dtype == np.float32
        np.testing.assert_allclose(served[key], value, rtol=1e-5, atol=1e-6)


def test_null_returns_zeros_and_outputs_are_deterministic(
    examples_repository: Path, run_exported: Callable[..., dict[str, np.ndarray]], tmp_path: Path
) -> None:
    inputs = sample_inputs("null", batch_size=5)
    assert not run_exported(examples_repository, "null", inputs)["OUTPUT__0"].any()
    assert export_examples(tmp_path, ["mlp"]) == ["mlp"]
    again = sample_inputs("mlp", batch_size=4, seed=1)
    first = run_exported(examples_repository, "mlp", again)["OUTPUT__0"]
    second = run_exported(tmp_path, "mlp", again)["OUTPUT__0"]
    assert first.tobytes() == second.tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp"]


def test_builds_are_seeded() -> None:
    a, b = build_model("cnn").state_dict(), build_model("cnn").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_example_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="no example model 'resnet'"):
        export_examples(tmp_path, ["mlp", "resnet"])
    assert not any(tmp_path.iterdir())  # nothing written when a name is wrong


def test_the_canary_example_splits_shadows_and_answers_from_both_versions(tmp_path: Path) -> None:
    import re
    import urllib.request

    import grpc
    from testsupport import free_port, start_server, wait_until
    from typer.testing import CliRunner

    from batchwire.protos import grpc_service_pb2 as pb
    from batchwire.protos import grpc_service_pb2_grpc as pb_grpc
    from batchwire.server.cli import app

    result = CliRunner().invoke(
        app, ["examples", "export", str(tmp_path), "--model", "mlp", "--canary"]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'mlp_canary'}" in result.output
    entry = ModelRepository(tmp_path).discover_model("mlp_canary")
    assert entry.ok, entry.error
    assert sorted(v.version for v in entry.versions) == ["1", "2"]
    assert entry.versions[0].spec.parameters["batchwire.traffic"] == "1:90,2:10"

    server = start_server(tmp_path, metrics_port=free_port())
    try:
        x = sample_inputs("mlp", 1)["INPUT__0"]
        request = pb.ModelInferRequest(model_name="mlp_canary")
        request.inputs.add(name="INPUT__0", datatype="FP32", shape=list(x.shape))
        request.raw_input_contents.append(np.ascontiguousarray(x, np.float32).tobytes())
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            answers = [stub.ModelInfer(request, timeout=30) for _ in range(200)]
        versions = {a.model_version for a in answers}
        assert versions == {"1", "2"}
        reference = reference_outputs("mlp", {"INPUT__0": x})["OUTPUT__0"]
        for answer in answers:
            if answer.model_version == "1":  # version 1 is the mlp example itself
                got = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(1, 10)
                np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-5)

        def compared() -> float:
            assert server.metrics_url is not None
            with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
                text = response.read().decode()
            found = re.findall(
                r'batchwire_shadow_requests_total\{[^}]*outcome="compared"[^}]*\} (\S+)', text
            )
            return float(found[0]) if found else 0.0

        wait_until(lambda: compared() > 0, "shadow comparisons of the canary")
    finally:
        server.stop()
