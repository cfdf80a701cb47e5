"""What the response-cache stage costs per request, measured in-process, without a network.

``python -m batchwire.bench.response_cache_cost [--requests 20000] [--out results/features]``

The stage (:mod:`batchwire.server.response_cache_stage`) in front of a stand-in for the
rest of the chain that answers at once with an output as large as the input (so the
figures are the stage's own work, not a model's), against that stand-in called
directly. Inputs of 256 bytes and 48 KB (64 and 12288 FP32), cases:

- ``key``: computing the request key alone (SHA-256 over the framed request);
- ``hit``: the same request every time, answered from the cache;
- ``miss``: a different request every time (the cache holds 256 of them, so it
  evicts as it goes), computed and stored: key, lookup, the output copied and frozen,
  insertion;
- ``coalesce_miss``: a different request every time through coalescing without a
  cache (the run's own task, shield, the in-flight table).

Each case is timed in alternating blocks against the bare call, the median block
kept, on the server's event loop (uvloop when installed). Writes ``response_cache_cost.json``: microseconds per request, and added over
the bare call. Run it alone on the machine (``flock /tmp/batchwire-bench.lock``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from batchwire.core.types import InferenceRequest, InferenceResult, RequestTimings
from batchwire.protos import model_config_pb2 as mc
from batchwire.server.app import new_event_loop
from batchwire.server.inference_call import Caller, InferenceCall
from batchwire.server.response_cache import ResponseCache, request_key
from batchwire.server.response_cache_stage import COALESCE_KEY, ResponseCaching

SIZES = {"256B": 64, "48KB": 12288}
BLOCKS = 10


async def _answer(call: InferenceCall) -> InferenceResult:
    """The rest of the chain: an output the size of the input, as a model's would be."""
    x = call.request.inputs["X"]  # type: ignore[union-attr]
    return InferenceResult({"Y": x + 0}, RequestTimings())


def _served(caching: bool, coalesce: bool) -> Any:
    config = mc.ModelConfig(name="bench")
    config.response_cache.enable = caching
    config.parameters[COALESCE_KEY].string_value = "true" if coalesce else "false"
    return SimpleNamespace(name="bench", version="1", config=config)


def _stage(served: Any, cache: ResponseCache | None) -> ResponseCaching:
    registry = SimpleNamespace(versions=lambda model: ["1"], find=lambda model, version: served)
    plane = SimpleNamespace(response_cache=cache, telemetry=None, registry=registry)
    stage = ResponseCaching.create(plane, "bench")  # type: ignore[arg-type]
    assert stage is not None
    stage.next = _answer
    return stage


def _calls(served: Any, count: int, elements: int, distinct: bool) -> list[InferenceCall]:
    caller = Caller("ModelInfer", lambda: None)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((1, elements)).astype(np.float32)
    calls = []
    for index in range(count):
        x = base.copy()
        if distinct:
            x[0, 0] = index
        call = InferenceCall(None, None, caller, "bench")  # type: ignore[arg-type]
        call.served = served
        call.request = InferenceRequest({"X": x})
        call.datatypes = {"X": "FP32"}
        calls.append(call)
    return calls


async def _time(
    handler: Callable[[InferenceCall], Awaitable[Any]], calls: list[InferenceCall]
) -> float:
    started = time.perf_counter()
    for call in calls:
        await handler(call)
    return (time.perf_counter() - started) / len(calls) * 1e6


async def _key_time(calls: list[InferenceCall]) -> float:
    started = time.perf_counter()
    for call in calls:
        request_key("bench", "1", call.request, call.datatypes)  # type: ignore[arg-type]
    return (time.perf_counter() - started) / len(calls) * 1e6


async def measure(elements: int, requests: int) -> dict[str, dict[str, float]]:
    per_block = max(requests // BLOCKS, 1)
    cached = _served(caching=True, coalesce=False)
    coalescing = _served(caching=False, coalesce=True)
    Timer = Callable[[list[InferenceCall]], Awaitable[float]]
    cases: dict[str, tuple[Timer, list[InferenceCall]]] = {}
    hit_stage = _stage(cached, ResponseCache(1 << 30))
    same = _calls(cached, per_block, elements, distinct=False)
    await hit_stage(same[0])  # stored: every later call hits
    cases["key"] = (_key_time, same)
    cases["hit"] = (lambda calls: _time(hit_stage, calls), same)
    entry = elements * 4 + 1024
    miss_stage = _stage(cached, ResponseCache(256 * entry))
    cases["miss"] = (
        lambda calls: _time(miss_stage, calls),
        _calls(cached, per_block, elements, distinct=True),
    )
    coalesce_stage = _stage(coalescing, None)
    cases["coalesce_miss"] = (
        lambda calls: _time(coalesce_stage, calls),
        _calls(coalescing, per_block, elements, distinct=True),
    )
    bare_calls = _calls(cached, per_block, elements, distinct=False)
    results: dict[str, dict[str, float]] = {}
    for name, (timer, calls) in cases.items():
        bare: list[float] = []
        timed: list[float] = []
        for _ in range(BLOCKS):
            bare.append(await _time(_answer, bare_calls))
            timed.append(await timer(calls))
        added = (
            statistics.median(timed)
            if name == "key"
            else statistics.median(t - b for t, b in zip(timed, bare, strict=True))
        )
        results[name] = {
            "bare_us": round(statistics.median(bare), 3),
            "us": round(statistics.median(timed), 3),
            "added_us": round(added, 3),
        }
    return results


def run(requests: int, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, Any] = {}
    for label, elements in SIZES.items():
        loop = new_event_loop()  # the server's: uvloop when installed
        try:
            figures = loop.run_until_complete(measure(elements, requests))
        finally:
            loop.close()
        sizes[label] = figures
        for case, row in figures.items():
            print(
                f"{label:>5} {case:>13}: +{row['added_us']:8.2f} us per request ({row['us']:.2f})"
            )
    result = {
        "requests": requests,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "sizes": sizes,
    }
    (out / "response_cache_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=Path("results/features"))
    args = parser.parse_args()
    run(args.requests, args.out)


if __name__ == "__main__":
    main()
