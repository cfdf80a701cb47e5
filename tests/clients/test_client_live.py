"""The clients and ``batchwire infer`` against the real batchwire server on the example models.

Uses ``tests/conftest.py``'s ``server_address`` fixture.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from batchwire.clients import AsyncInferenceClient, InferenceClient, InferenceServerError
from batchwire.clients.cli import build_app
from batchwire.examples.reference import reference_outputs, sample_inputs


@pytest.fixture
def client(server_address: str) -> Iterator[InferenceClient]:
    with InferenceClient(server_address, timeout=60) as client:
        yield client


def test_health_and_metadata(client: InferenceClient) -> None:
    assert client.server_live()
    assert client.server_ready()
    assert client.health() == "SERVING"
    assert client.server_metadata().name
    for name in ("mlp", "cnn", "text", "null"):
        assert client.model_ready(name)
    mlp = client.model_metadata("mlp")
    assert [(t.name, t.datatype, list(t.shape)) for t in mlp.inputs] == [
        ("INPUT__0", "FP32", [-1, 64])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in mlp.outputs] == [
        ("OUTPUT__0", "FP32", [-1, 10])
    ]
    text = client.model_metadata("text")
    assert [(t.name, t.datatype, list(t.shape)) for t in text.inputs] == [
        ("TOKENS", "INT64", [-1, -1])
    ]
    assert client.model_config("mlp").max_batch_size > 0
    assert {"mlp", "cnn", "text", "null"} <= {m.name for m in client.repository_index()}


@pytest.mark.parametrize("model", ["mlp", "cnn", "text", "null"])
def test_infer_matches_reference(client: InferenceClient, model: str) -> None:
    inputs = sample_inputs(model, batch_size=3, seed=7)
    result = client.infer(model, inputs, request_id="live-1")
    assert result.id == "live-1"
    assert result.model_name == model
    expected = reference_outputs(model, inputs)
    assert set(result.outputs) == set(expected)
    for name, want in expected.items():
        got = result.as_numpy(name)
        assert got.dtype == np.float32
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_infer_mlp_random_input_and_options(client: InferenceClient) -> None:
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    result = client.infer(
        "mlp", {"INPUT__0": x}, outputs=["OUTPUT__0"], priority=1, timeout_us=10_000_000
    )
    assert result.as_numpy("OUTPUT__0").shape == (4, 10)
    assert np.isfinite(result.as_numpy("OUTPUT__0")).all()
    zeros = client.infer("null", {"INPUT__0": x}).as_numpy("OUTPUT__0")
    np.testing.assert_array_equal(zeros, np.zeros((4, 10), np.float32))


def test_errors(client: InferenceClient) -> None:
    with pytest.raises(InferenceServerError) as info:
        client.infer("no_such_model", {"INPUT__0": np.zeros((1, 64), np.float32)})
    assert info.value.status_code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(InferenceServerError) as info:
        client.model_metadata("no_such_model")
    assert info.value.status_code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(InferenceServerError) as info:
        client.infer("mlp", {"INPUT__0": np.zeros((1, 63), np.float32)})
    assert info.value.status_code == grpc.StatusCode.INVALID_ARGUMENT


def test_stream_infer(client: InferenceClient) -> None:
    batches = [sample_inputs("mlp", batch_size=1, seed=i) for i in range(5)]
    results = {r.id: r for r in client.stream_infer("mlp", batches)}
    assert sorted(results) == ["0", "1", "2", "3", "4"]
    for i, inputs in enumerate(batches):
        np.testing.assert_allclose(
            results[str(i)].as_numpy("OUTPUT__0"),
            reference_outputs("mlp", inputs)["OUTPUT__0"],
            rtol=1e-4,
            atol=1e-5,
        )
    errors = list(
        client.stream_infer(
            "no_such_model", [{"INPUT__0": np.zeros((1, 64), np.float32)}], raise_on_error=False
        )
    )
    assert len(errors) == 1
    assert isinstance(errors[0], InferenceServerError)


async def test_async_client(server_address: str) -> None:
    async with AsyncInferenceClient(server_address, timeout=60) as client:
        assert await client.server_ready()
        inputs = [sample_inputs("mlp", batch_size=1, seed=i) for i in range(8)]
        results = await asyncio.gather(*(client.infer("mlp", x) for x in inputs))
        for x, result in zip(inputs, results, strict=True):
            np.testing.assert_allclose(
                result.as_numpy("OUTPUT__0"),
                reference_outputs("mlp", x)["OUTPUT__0"],
                rtol=1e-4,
                atol=1e-5,
            )
        streamed = [r async for r in client.stream_infer("text", [{"TOKENS": [[5, 6, 7]]}])]
        assert streamed[0].as_numpy("TOKEN_NORMS").shape == (1, 3)
        with pytest.raises(InferenceServerError) as info:
            await client.model_metadata("no_such_model")
        assert info.value.status_code == grpc.StatusCode.NOT_FOUND


def main_app() -> typer.Typer:
    """The ``batchwire`` app, which must have ``infer`` registered."""
    from batchwire.server.cli import app

    return app


@pytest.mark.parametrize("which", ["batchwire", "standalone"])
def test_cli_infer_random(server_address: str, which: str) -> None:
    app = main_app() if which == "batchwire" else build_app()
    runner = CliRunner()
    args = ["infer", "--model", "mlp", "--random", "--url", server_address]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "OUTPUT__0  FP32  [1, 10]" in result.stdout
    result = runner.invoke(app, [*args[:2], "text", "--random", "--url", server_address])
    assert result.exit_code == 0, result.output
    assert "EMBEDDING  FP32  [1, 32]" in result.stdout
    assert "TOKEN_NORMS  FP32  [1, 8]" in result.stdout
    result = runner.invoke(
        app, ["infer", "-m", "cnn", "--random", "-b", "2", "-u", server_address, "--json"]
    )
    assert result.exit_code == 0, result.output
    assert '"shape": [2, 10]' in result.stdout
    result = runner.invoke(app, ["infer", "-m", "nope", "--random", "-u", server_address])
    assert result.exit_code == 1
    assert "NOT_FOUND" in result.stderr
