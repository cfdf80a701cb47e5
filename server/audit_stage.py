"""The audit stage: one record per inference request in the audit log (``--audit-log``).

First in the pipeline (:data:`batchwire.server.stages.STAGES`), so that it sees every
request the data plane accepted, refused ones included: a caller without the scope,
an unknown model, a malformed input. It builds an
:class:`~batchwire.telemetry.audit_records.AuditEvent` of references (the decoded
arrays, the result's arrays, the timings) and hands it to the
:class:`~batchwire.telemetry.audit_log.AuditLog`, whose writer thread hashes,
serializes, chains and writes it: on the event loop a request costs two wall-clock
reads, one small object and a queue append.

Rules
-----
1. **Which requests.** Every request whose answer is an error (an
   :class:`~batchwire.core.errors.InferenceError`, or the caller cancelling) is
   recorded. A successful one is recorded when sampled: per model, the config
   parameter ``batchwire.audit_sample`` (a share from 0 to 1, default 1: all). The
   decision hashes the request (BLAKE2b over the model name, the request id and
   every input's bytes), so a retry of the same request gets the same decision, and
   a share ``s`` records ``s`` of distinct requests, within sampling error.
2. **When.** The record is handed over once the answer is known and before the
   caller gets it. With ``--audit-queue-full=block`` and a full queue the answer waits
   for room (a complete log is worth more than the latency); with ``drop`` the
   record is dropped and counted (``batchwire_audit_dropped_total``).
3. **What.** The request id (read from the message even when it was never decoded),
   the model name asked for and the version that answered (none when the request
   never reached one), that version's artifact and config SHA-256 (taken when it was
   loaded), the caller's principal, the status and message, each input and output
   tensor (name, datatype, shape; hashed, and their bytes with ``--audit-payloads``),
   the batch number, queue and compute time. Inputs read from shared memory are
   copied first: the client may rewrite its region as soon as it has the answer,
   before the writer hashes it.
4. **Redaction.** Per model, ``batchwire.audit_redact`` names inputs and outputs
   (comma-separated) whose payload is never written; their hash is.
5. **Refused before the data plane.** An inference call the transport's access check
   refuses (no or a wrong token, a principal without an inference scope, a missing
   restricted-protocol header) never reaches this stage; the gRPC front end reports it
   through :func:`transport_refusals` instead: a record with the model name and
   request id the message carries ("" for a refused stream), no version, no
   principal (none was admitted) and the refusal's status and message.
6. **Copies.** Shadow copies (:mod:`batchwire.server.shadow`) start after this stage:
   only answers that reach a caller are recorded.

Concurrency: loop thread only; the log's queue is the only thing shared with its thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import numpy as np

from batchwire.core.datatypes import serialize_bytes
from batchwire.core.errors import InferenceError
from batchwire.server.pipeline import Stage
from batchwire.telemetry.audit_records import AuditEvent

if TYPE_CHECKING:
    from batchwire.core.types import InferenceResult
    from batchwire.server.dataplane import DataPlane
    from batchwire.server.inference_call import InferenceCall
    from batchwire.telemetry.audit_log import AuditLog

__all__ = [
    "REDACT_KEY",
    "SAMPLE_KEY",
    "Audit",
    "audit",
    "parse_redact",
    "parse_sample",
    "transport_refusals",
]

SAMPLE_KEY = "batchwire.audit_sample"
REDACT_KEY = "batchwire.audit_redact"

_EMPTY: tuple[tuple[str, str, np.ndarray], ...] = ()
_time_ns = time.time_ns


def parse_sample(text: str) -> float:
    """``batchwire.audit_sample``: a share of requests from 0 to 1."""
    try:
        share = float(text)
    except ValueError:
        raise ValueError(f"expected a share of requests from 0 to 1, got '{text}'") from None
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"expected a share of requests from 0 to 1, got {text}")
    return share


def parse_redact(text: str) -> frozenset[str]:
    """``batchwire.audit_redact``: tensor names, comma-separated."""
    names = frozenset(part.strip() for part in text.split(","))
    if "" in names:
        raise ValueError(f"expected tensor names separated by commas, got '{text}'")
    return names


class Audit(Stage):
    """Records every request of one model chain (see the module docstring)."""

    __slots__ = ("_log", "_model", "_redact", "_threshold")

    def __init__(self, log: AuditLog, model: str | None, sample: float, redact: frozenset[str]):
        super().__init__()
        self._log = log
        self._model = (model or "").encode()
        self._redact = redact
        #: A request is sampled when its 64-bit hash is below this (None: all are).
        self._threshold = None if sample >= 1.0 else int(sample * 2**64)

    async def __call__(self, call: InferenceCall) -> InferenceResult:
        received = _time_ns()
        try:
            result = await self.next(call)
        except InferenceError as exc:
            waiter = self._log.submit(self._event(call, received, None, exc.code.name, exc.message))
            if waiter is not None:
                await waiter
            raise
        except asyncio.CancelledError:
            # The caller went away: recorded, without waiting (nobody waits for the answer).
            self._log.submit(self._event(call, received, None, "CANCELLED", "request cancelled"))
            raise
        if self._threshold is None or self._sampled(call):
            waiter = self._log.submit(self._event(call, received, result, "OK", ""))
            if waiter is not None:
                await waiter
        return result

    def _sampled(self, call: InferenceCall) -> bool:
        digest = hashlib.blake2b(self._model, digest_size=8)
        request = call.request
        if request is not None:
            digest.update(request.id.encode())
            for array in request.inputs.values():
                if array.dtype.hasobject:
                    digest.update(serialize_bytes(array))
                else:
                    digest.update(np.ascontiguousarray(array).data)
        assert self._threshold is not None
        return int.from_bytes(digest.digest(), "little") < self._threshold

    def _event(
        self,
        call: InferenceCall,
        received: int,
        result: InferenceResult | None,
        code: str,
        message: str,
    ) -> AuditEvent:
        served = call.served
        request = call.request
        inputs = _EMPTY
        if request is not None and call.datatypes is not None:
            types = call.datatypes
            shared = request.shared.inputs if request.shared is not None else None
            inputs = tuple(
                (name, types.get(name, ""), array.copy() if shared and name in shared else array)
                for name, array in request.inputs.items()
            )
        outputs = _EMPTY
        timings = result.timings if result is not None else request.timings if request else None
        if result is not None and served is not None and served.spec is not None:
            specs = served.spec.output_map
            outputs = tuple(
                (name, specs[name].datatype if name in specs else "", array)
                for name, array in result.outputs.items()
            )
        batch_id = timings.batch_id if timings is not None else 0
        return AuditEvent(
            received_ns=received,
            answered_ns=_time_ns(),
            request_id=call.codec.request_id(call.message),
            model=call.model,
            version=served.version if served is not None else "",
            model_sha256=served.artifact_sha256 if served is not None else "",
            config_sha256=served.config_sha256 if served is not None else "",
            principal=call.caller.principal,
            code=code,
            message=message,
            inputs=inputs,
            outputs=outputs,
            batch_id=batch_id or None,
            queue_ns=timings.queue_ns if timings is not None else 0,
            compute_ns=(
                timings.compute_input_ns + timings.compute_infer_ns + timings.compute_output_ns
                if timings is not None
                else 0
            ),
            redact=self._redact,
            cached=result is not None and not batch_id,
        )


def audit(plane: DataPlane, model: str | None) -> Stage | None:
    """The stage for ``model``'s chain when the server keeps an audit log, else None."""
    log = plane.audit_log
    if log is None:
        return None
    sample, redact = 1.0, frozenset[str]()
    if model is not None:
        try:
            served = plane.registry.find(model)
        except InferenceError:
            served = None
        parameters = served.spec.parameters if served is not None and served.spec else {}
        # Checked at load (batchwire.server.repository.params): a bad value never gets here.
        if SAMPLE_KEY in parameters:
            sample = parse_sample(parameters[SAMPLE_KEY])
        if REDACT_KEY in parameters:
            redact = parse_redact(parameters[REDACT_KEY])
    return Audit(log, model, sample, redact)


def transport_refusals(
    log: AuditLog,
) -> Callable[[str, str, str, InferenceError], Awaitable[None] | None]:
    """The gRPC access check's ``on_refused`` hook: one record per refused inference call
    (rule 5 of the module docstring); returns the log's awaitable when it is full."""

    def refused(
        operation: str, model: str, request_id: str, error: InferenceError
    ) -> Awaitable[None] | None:
        now = _time_ns()
        return log.submit(
            AuditEvent(
                received_ns=now,
                answered_ns=now,
                request_id=request_id,
                model=model,
                version="",
                model_sha256="",
                config_sha256="",
                principal="",
                code=error.code.name,
                message=error.message,
                inputs=_EMPTY,
                outputs=_EMPTY,
                batch_id=None,
                queue_ns=0,
                compute_ns=0,
            )
        )

    return refused
