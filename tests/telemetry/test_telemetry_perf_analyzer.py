"""Triton's perf_analyzer against a real server: it runs, and it prints the server-side
breakdown (queue, compute input/infer/output) read from our ModelStatistics."""

from __future__ import annotations

import re
import subprocess

import pytest

BREAKDOWN = re.compile(
    r"Avg request latency: (\d+) usec \(overhead (\d+) usec \+ queue (\d+) usec"
    r" \+ compute input (\d+) usec \+ compute infer (\d+) usec \+ compute output (\d+) usec\)"
)


def _count(output: str, label: str) -> int:
    found = re.search(rf"{label}: (\d+)", output)
    assert found, f"perf_analyzer printed no '{label}':\n{output}"
    return int(found.group(1))


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
def test_perf_analyzer_prints_the_server_side_breakdown(
    perf_analyzer: str, server_address: str, streaming: bool
) -> None:
    args = [
        perf_analyzer,
        "-m",
        "mlp",
        "-u",
        server_address,
        "-i",
        "grpc",
        "--concurrency-range",
        "4:4",
        "--measurement-interval",
        "500",
        "--max-trials",
        "3",
        "--stability-percentage",
        "999",
    ]
    if streaming:
        args.append("--streaming")
    done = subprocess.run(args, capture_output=True, text=True, timeout=180, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    server = output[output.index("Server:") :]
    requests = _count(server, "Successful request count")
    assert requests > 0
    # Batch-1 requests: one item each; batching puts several in one execution.
    assert _count(server, "Inference count") == requests
    assert 0 < _count(server, "Execution count") <= requests
    breakdown = BREAKDOWN.search(server)
    assert breakdown, f"no server-side breakdown:\n{output}"
    total, overhead, queue, compute_input, compute_infer, compute_output = map(
        int, breakdown.groups()
    )
    assert compute_infer > 0 and total > 0
    # perf_analyzer's overhead is what the parts leave of the total (rounded per part).
    parts = queue + compute_input + compute_infer + compute_output
    assert parts <= total + 5 and abs(overhead - (total - parts)) <= 5
