"""Server CPU the access checks add to one call, measured in-process, without a network.

``python -m batchwire.bench.access_cost [--calls 200000] [--out results/features]``

End-to-end ratios (:mod:`batchwire.bench.feature_cost`) of a feature that costs a
few microseconds of a ~500 us request are below the noise of a shared 2-core host.
This measures the added work itself: the gRPC handler as
:class:`~batchwire.server.access_grpc.AccessInterceptor` wraps it, called with a
stand-in servicer context (invocation metadata as tritonclient sends it), against
the same handler unwrapped, plus the pipeline's per-model check
(:class:`~batchwire.server.access.Authorize`'s work). Cases: ``token`` (an auth
config, a bearer token per call), ``restricted`` (Triton's restricted group header),
``both``. Each is timed in alternating blocks, the median block kept.

Writes ``access_cost.json`` and ``access_cost.png``: microseconds added per call, and
the throughput ratio they imply for a CPU-bound server spending ``--request-cpu-us``
per request (default 450, what perf_analyzer at c=32 on ``mlp`` costs the server
here), ``1 / (1 + added / request)``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from batchwire.server.access import AccessPolicy, parse_restricted_protocol
from batchwire.server.access_grpc import AccessInterceptor

TOKEN = "access-cost-benchmark-token"
METHOD = "/inference.GRPCInferenceService/ModelInfer"


class _Context:
    """What the wrapped handler reads of a grpc.aio servicer context."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}


class _Details:
    method = METHOD
    invocation_metadata = ()


async def _servicer(request: Any, context: Any) -> Any:
    return request


def _policy(case: str, folder: Path) -> AccessPolicy:
    restricted = parse_restricted_protocol(["inference:bench-key=bench-value"])
    config = folder / "auth.toml"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    config.write_text(
        f'[[principals]]\nname = "bench"\ntoken_sha256 = "{digest}"\nscopes = ["inference"]\n'
    )
    if case == "token":
        return AccessPolicy(None, config)
    if case == "restricted":
        return AccessPolicy(restricted, None)
    return AccessPolicy(restricted, config)


async def _handler(policy: AccessPolicy) -> Callable[[Any, Any], Awaitable[Any]]:
    async def continuation(details: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(_servicer)

    interceptor = AccessInterceptor(policy)
    details = _Details()

    async def call(request: Any, context: Any) -> Any:
        # What grpc.aio does per call: ask the interceptor for the handler (cached after
        # the first call), then run its behaviour.
        handler = await interceptor.intercept_service(continuation, details)
        return await handler.unary_unary(request, context)

    return call


async def _time(call: Callable[[Any, Any], Awaitable[Any]], context: Any, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await call(None, context)
    return (time.perf_counter() - started) / calls * 1e6


async def measure(case: str, calls: int, blocks: int, folder: Path) -> dict[str, float]:
    policy = _policy(case, folder)
    metadata = (
        ("user-agent", "grpc-python/1.74"),
        ("authorization", f"Bearer {TOKEN}"),
        ("bench-key", "bench-value"),
    )
    context = _Context(metadata)
    wrapped = await _handler(policy)
    check_model = policy.check_model
    counts: dict[tuple[str, str], int] = {}

    async def with_stage(request: Any, ctx: Any) -> Any:
        # Authorize's work per inference request (when an auth config is in force).
        if policy.authenticating:
            check_model("bench", "mlp")
            key = ("mlp", "bench")
            counts[key] = counts.get(key, 0) + 1
        return await wrapped(request, ctx)

    bare: list[float] = []
    checked: list[float] = []
    per_block = max(calls // blocks, 1)
    for _ in range(blocks):
        bare.append(await _time(_servicer, context, per_block))
        checked.append(await _time(with_stage, context, per_block))
    return {
        "bare_us": round(statistics.median(bare), 3),
        "checked_us": round(statistics.median(checked), 3),
        "added_us": round(statistics.median(c - b for c, b in zip(checked, bare, strict=True)), 3),
    }


def run(calls: int, request_cpu_us: float, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    cases: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for case in ("restricted", "token", "both"):
            figures = asyncio.run(measure(case, calls, 20, Path(scratch)))
            figures["implied_ratio"] = round(1 / (1 + figures["added_us"] / request_cpu_us), 4)
            cases[case] = figures
            print(
                f"{case:>10}: +{figures['added_us']:.2f} us per call "
                f"(bare {figures['bare_us']:.2f}, checked {figures['checked_us']:.2f}); "
                f"implied throughput ratio {figures['implied_ratio']:.4f} at "
                f"{request_cpu_us:.0f} us per request"
            )
    result = {"calls": calls, "request_cpu_us": request_cpu_us, "cases": cases}
    (out / "access_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, out / "access_cost.png")
    return result


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["cases"])
    added = [result["cases"][n]["added_us"] for n in names]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.bar(names, added)
    axis.set_ylabel("server CPU added per call (us)")
    axis.set_title(f"access checks, against {result['request_cpu_us']:.0f} us per request")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--request-cpu-us", type=float, default=450.0)
    parser.add_argument("--out", type=Path, default=Path("results/features"))
    args = parser.parse_args()
    run(args.calls, args.request_cpu_us, args.out)


if __name__ == "__main__":
    main()
