"""A closed-loop gRPC load generator: C requests in flight, each answer sending the next
(unary calls, or one bidirectional ModelStreamInfer stream).

Requests are encoded once up front, so the generator spends its CPU on gRPC,
not on building messages (on 2 cores it shares the machine with the server).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc
import numpy as np

from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc


@dataclass(slots=True)
class LoadResult:
    """What one load window measured."""

    concurrency: int
    seconds: float
    requests: int
    items: int
    errors: int
    latencies_ms: list[float] = field(repr=False)

    @property
    def throughput(self) -> float:
        """Items (not requests) answered per second."""
        return self.items / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict[str, float | int]:
        return {
            "concurrency": self.concurrency,
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
            "items": self.items,
            "errors": self.errors,
            "throughput": round(self.throughput, 1),
            "p50_ms": round(self.percentile(50), 3),
            "p99_ms": round(self.percentile(99), 3),
        }


def build_request(model: str, inputs: dict[str, np.ndarray]) -> pb.ModelInferRequest:
    """A raw-contents ModelInferRequest for ``inputs`` (FP32 / INT64 arrays)."""
    request = pb.ModelInferRequest(model_name=model)
    for name, array in inputs.items():
        datatype = {"float32": "FP32", "int64": "INT64"}[str(array.dtype)]
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    return request


async def _drive(
    address: str,
    request: pb.ModelInferRequest,
    items: int,
    concurrency: int,
    warmup: float,
    seconds: float,
) -> LoadResult:
    options = [("grpc.max_receive_message_length", 2**31 - 1)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        latencies: list[float] = []
        errors = 0
        start = time.perf_counter()
        measure_from = start + warmup
        stop_at = measure_from + seconds
        counted = 0

        async def worker() -> None:
            nonlocal errors, counted
            while (now := time.perf_counter()) < stop_at:
                try:
                    await infer(request)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                done = time.perf_counter()
                if now >= measure_from:
                    latencies.append((done - now) * 1e3)
                    counted += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - measure_from
    return LoadResult(concurrency, elapsed, counted, counted * items, errors, latencies)


async def _drive_stream(
    address: str,
    request: pb.ModelInferRequest,
    items: int,
    concurrency: int,
    warmup: float,
    seconds: float,
) -> LoadResult:
    """``concurrency`` requests in flight on one ModelStreamInfer stream; each answer
    sends its slot's next request (slots are told apart by the request ``id``)."""
    slots = []
    for slot in range(concurrency):
        copy = pb.ModelInferRequest()
        copy.CopyFrom(request)
        copy.id = str(slot)
        slots.append(copy)
    sent_at = [0.0] * concurrency
    latencies: list[float] = []
    errors = 0
    counted = 0
    options = [("grpc.max_receive_message_length", 2**31 - 1)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
        start = time.perf_counter()
        measure_from = start + warmup
        stop_at = measure_from + seconds
        for slot, message in enumerate(slots):
            sent_at[slot] = time.perf_counter()
            await call.write(message)
        outstanding = concurrency
        while outstanding:
            response = await call.read()
            if response is grpc.aio.EOF:
                raise RuntimeError(f"the stream ended with {outstanding} request(s) unanswered")
            done = time.perf_counter()
            slot = int(response.infer_response.id)
            if response.error_message:
                errors += 1
            elif sent_at[slot] >= measure_from:
                latencies.append((done - sent_at[slot]) * 1e3)
                counted += 1
            if done < stop_at:
                sent_at[slot] = done
                await call.write(slots[slot])
            else:
                outstanding -= 1
        await call.done_writing()
        elapsed = time.perf_counter() - measure_from
    return LoadResult(concurrency, elapsed, counted, counted * items, errors, latencies)


def run_load(
    address: str,
    request: pb.ModelInferRequest,
    *,
    items_per_request: int,
    concurrency: int,
    seconds: float,
    warmup: float = 0.5,
    streaming: bool = False,
) -> LoadResult:
    """Keep ``concurrency`` requests in flight for ``warmup + seconds``; measure the last ``seconds``.

    ``streaming``: over one ModelStreamInfer stream instead of unary ModelInfer calls.
    """
    drive = _drive_stream if streaming else _drive
    main = drive(address, request, items_per_request, concurrency, warmup, seconds)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
