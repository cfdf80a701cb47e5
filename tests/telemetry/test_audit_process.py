"""The audit log written by a child process: what the server hands over arrives intact,
start-up errors come back in the child's words, and a killed child is replaced."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from testsupport import wait_until

from batchwire.telemetry.audit_log import AuditLog, AuditLogError
from batchwire.telemetry.audit_process import AuditLogProcess, pack_event, packed_body
from batchwire.telemetry.audit_records import AuditEvent, request_body
from batchwire.telemetry.audit_verify import verify_log


def event(number: int, **changes: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "received_ns": 1_796_686_475_000_000_000 + number,
        "answered_ns": 1_796_686_475_000_500_000 + number,
        "request_id": f"r{number}",
        "model": "m",
        "version": "1",
        "model_sha256": "a" * 64,
        "config_sha256": "b" * 64,
        "principal": "p",
        "code": "OK",
        "message": "",
        "inputs": (
            ("X", "FP32", np.arange(8, dtype=np.float32).reshape(2, 4) + number),
            ("S", "BYTES", np.array([b"one", "two"], dtype=np.object_)),
        ),
        "outputs": (("Y", "INT64", np.arange(6, dtype=np.int64).reshape(2, 3).T),),
        "batch_id": number + 1,
        "queue_ns": 10 * number,
        "compute_ns": 20 * number,
        "redact": frozenset({"S"}),
    }
    fields.update(changes)
    return AuditEvent(**fields)


def request_lines(folder: Path) -> list[dict[str, Any]]:
    lines = []
    for path in sorted(folder.glob("*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in lines if r["type"] == "request"]


def run(main: Callable[[asyncio.AbstractEventLoop], Awaitable[None]]) -> None:
    async def wrapper() -> None:
        await main(asyncio.get_running_loop())

    asyncio.run(wrapper())


@pytest.mark.parametrize("payloads", [False, True])
def test_a_packed_event_makes_the_same_record(payloads: bool) -> None:
    """The child encodes what crossed the pipe exactly as the event itself encodes."""
    for original in (
        event(3),
        event(4, batch_id=None, cached=True, inputs=(), outputs=()),
        event(5, inputs=(("E", "FP32", np.zeros((0, 4), np.float32)),)),
        event(6, inputs=(("X", "FP32", np.zeros((1, 2))),)),  # float64: not encodable
        event(7, request_id='q"uote ☃', message="bad\nline", code="INTERNAL"),
    ):
        assert packed_body(pack_event(original), payloads) == request_body(original, payloads)


def test_the_child_writes_what_the_thread_writer_would(tmp_path: Path) -> None:
    async def main(loop: asyncio.AbstractEventLoop) -> None:
        for name, kind in (("process", AuditLogProcess), ("thread", AuditLog)):
            audit = kind(tmp_path / name, payloads=True, checkpoint_records=7)
            audit.start(loop)
            for number in range(50):
                waiter = audit.submit(event(number))
                assert waiter is None
            await asyncio.to_thread(audit.close)
            assert audit.written == 50 and audit.depth == 0
            assert audit.dropped == {"queue_full": 0, "write_error": 0, "closed": 0}

    run(main)
    process, thread = request_lines(tmp_path / "process"), request_lines(tmp_path / "thread")
    assert [r["request_id"] for r in process] == [f"r{n}" for n in range(50)]
    # Same records but for seq and prev (the chains interleave other records alike).
    strip = ("seq", "prev")
    assert [{k: v for k, v in r.items() if k not in strip} for r in process] == [
        {k: v for k, v in r.items() if k not in strip} for r in thread
    ]
    report = verify_log(tmp_path / "process")
    assert report.ok and report.requests == 50 and report.checkpoints >= 7


def test_start_errors_come_back_in_the_childs_words(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")

    async def main(loop: asyncio.AbstractEventLoop) -> None:
        audit = AuditLogProcess(blocker / "audit")
        with pytest.raises(AuditLogError, match=r"cannot create the audit log directory .*file"):
            audit.start(loop)

    run(main)
    bad_key = tmp_path / "key.pem"
    bad_key.write_text("not a key")
    with pytest.raises(AuditLogError, match=r"key\.pem"):
        AuditLogProcess(tmp_path / "audit", signing_key_path=bad_key)


def test_a_killed_child_is_replaced_and_the_chain_goes_on(tmp_path: Path) -> None:
    async def main(loop: asyncio.AbstractEventLoop) -> None:
        audit = AuditLogProcess(tmp_path, on_full="block")
        audit.start(loop)
        for number in range(30):
            audit.submit(event(number))
        await asyncio.to_thread(wait_until, lambda: audit.written == 30, "30 records written")
        pid = audit.writer_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        for number in range(30, 60):
            waiter = audit.submit(event(number))
            if waiter is not None:
                await waiter
        await asyncio.to_thread(wait_until, lambda: audit.written == 60, "60 records written")
        assert audit.write_errors >= 1 and "audit log process exited" in audit.last_error
        await asyncio.to_thread(audit.close)

    run(main)
    assert [r["request_id"] for r in request_lines(tmp_path)] == [f"r{n}" for n in range(60)]
    # The killed child never closed its file: the next one says so, and verify agrees.
    report = verify_log(tmp_path)
    assert report.ok, report.problems
