"""AsyncInferenceClient against the local echo server over a real loopback gRPC connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from client_samples import sample
from testsupport import ALL_DATATYPES

from batchwire.clients import AsyncInferenceClient, InferenceServerError, InferInput
from batchwire.core.datatypes import NUMPY_DTYPES


async def test_server_endpoints(aio_client: AsyncInferenceClient) -> None:
    assert await aio_client.server_live() is True
    assert await aio_client.server_ready() is True
    assert await aio_client.model_ready("echo") is True
    assert (await aio_client.server_metadata()).name == "echo-server"
    assert [t.name for t in (await aio_client.model_metadata("fixed")).inputs] == ["X"]
    assert (await aio_client.model_config("echo")).max_batch_size == 8
    assert sorted(m.name for m in await aio_client.repository_index()) == ["echo", "fixed"]
    assert await aio_client.health() == "SERVING"
    with pytest.raises(InferenceServerError) as info:
        await aio_client.health("nope")
    assert info.value.status_code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(InferenceServerError) as info:
        await aio_client.model_statistics()
    assert info.value.status_code == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
async def test_round_trip_every_datatype(aio_client: AsyncInferenceClient, typed: bool) -> None:
    inputs = [
        InferInput(f"in_{dt}", sample(dt, (3, 2), seed), dt)
        for seed, dt in enumerate(ALL_DATATYPES)
    ]

    result = await aio_client.infer(
        "echo", inputs, parameters={"typed": typed}, request_id="r1", priority=4
    )
    assert result.id == "r1"
    assert result.parameters["priority"] == 4
    for item in inputs:
        out = result.as_numpy(item.name)
        assert result.datatypes[item.name] == item.datatype
        assert out.shape == (3, 2)
        if item.datatype == "BYTES":
            assert out.tolist() == item.data.tolist()
        else:
            assert out.dtype == NUMPY_DTYPES[item.datatype]
            np.testing.assert_array_equal(out, item.data)


async def test_errors_and_deadline(aio_client: AsyncInferenceClient) -> None:
    with pytest.raises(InferenceServerError) as info:
        await aio_client.infer("missing", {"x": np.zeros(1)})
    assert info.value.status_code == grpc.StatusCode.NOT_FOUND
    assert "'missing' is not found" in info.value.message
    with pytest.raises(InferenceServerError) as info:
        await aio_client.infer(
            "echo", {"x": np.zeros(1)}, parameters={"sleep_s": 5.0}, deadline=0.2
        )
    assert info.value.status_code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_concurrent_requests(aio_client: AsyncInferenceClient) -> None:
    xs = [np.full((2,), i, np.int32) for i in range(20)]
    results = await asyncio.gather(
        *(aio_client.infer("echo", {"x": x}, request_id=str(i)) for i, x in enumerate(xs))
    )
    for i, (x, result) in enumerate(zip(xs, results, strict=True)):
        assert result.id == str(i)
        np.testing.assert_array_equal(result.as_numpy("x"), x)


async def test_stream_infer_sync_and_async_iterables(aio_client: AsyncInferenceClient) -> None:
    async def agen() -> AsyncIterator[dict[str, np.ndarray]]:
        for i in range(4):
            await asyncio.sleep(0)
            yield {"x": np.array([i], np.float32)}

    sync_items = [{"x": np.array([i], np.float32)} for i in range(4)]
    for items in (sync_items, agen()):
        results = [r async for r in aio_client.stream_infer("echo", items, timeout_us=10)]
        assert [r.id for r in results] == ["0", "1", "2", "3"]
        assert [float(r.as_numpy("x")[0]) for r in results] == [0.0, 1.0, 2.0, 3.0]
        assert all(r.parameters["timeout"] == 10 for r in results)


async def test_stream_errors(aio_client: AsyncInferenceClient) -> None:
    items = [{"x": np.zeros(1)}, {"x": np.zeros(1)}]
    with pytest.raises(InferenceServerError) as info:
        async for _ in aio_client.stream_infer("missing", items):
            pass
    assert info.value.request_id == "0"
    errors = [r async for r in aio_client.stream_infer("missing", items, raise_on_error=False)]
    assert [type(e) for e in errors] == [InferenceServerError] * 2
    with pytest.raises(ValueError, match="cannot send a float64 array as INT8"):
        async for _ in aio_client.stream_infer(
            "echo", [{"x": np.array([1.5])}], datatypes={"x": "INT8"}
        ):
            pass
    with pytest.raises(InferenceServerError) as info:
        async for _ in aio_client.stream_infer(
            "echo", items, parameters={"sleep_s": 5.0}, deadline=0.2
        ):
            pass
    assert info.value.status_code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await aio_client.server_live()


async def test_stream_early_close(aio_client: AsyncInferenceClient) -> None:
    async def endless() -> AsyncIterator[dict[str, np.ndarray]]:
        i = 0
        while True:
            yield {"x": np.array([i])}
            i += 1

    async with contextlib.aclosing(aio_client.stream_infer("echo", endless())) as stream:
        ids = []
        async for result in stream:
            ids.append(result.id)
            if len(ids) == 3:
                break
    assert ids == ["0", "1", "2"]
    assert await aio_client.server_ready()
