"""Soak: a bounded run of mixed, partly hostile load that checks nothing is lost or leaks.

``batchwire soak`` or ``python -m batchwire.bench.soak`` ``[--out results/soak]
[--seconds 180] [--warmup 30] [--short] [--workers 12] [--streams 4] [--seed 0]``

One ``batchwire serve`` subprocess on loopback, ``--model-control-mode explicit
--load-model '*'``, serving every example model (exported into a temporary
repository) and the soak's own faulty model (below), under load from this process for
``--seconds`` (default 180; ``--short``: 25, for CI); it stops by itself. The load:

* ``--workers`` closed-loop unary ModelInfer callers and ``--streams`` ModelStreamInfer
  callers (each stream sends bursts of 1-8 requests and reads their answers, then
  closes after 1-20 bursts), each request to a model chosen at random (a ``fault``
  request: to ``soak-faulty``).
* Request kinds (unary): ``ok`` 66 %; ``malformed`` 10 % (a wrong dimension where
  the model has a fixed one, an extra dimension, a wrong datatype, a wrong byte
  count, a missing input, an unknown input; each variant is tried once before the
  load and must be INVALID_ARGUMENT); ``unknown_model`` 4 %; ``deadline`` 8 % (a gRPC
  deadline of 0.5-5 ms); ``cancel`` 8 % (the client cancels the call after 0-4 ms);
  ``fault`` 4 %. Streams carry ``ok`` 82 %, ``malformed`` 10 %, ``unknown_model`` 5 %
  and ``fault`` 3 %, and one stream in five is cancelled by the client with requests
  in flight.
* The faulty model ``soak-faulty`` (backend ``python``, written into the repository by
  the soak: inputs ``X`` FP32 [4] and ``FAULT`` INT32 [1], output ``Y`` FP32 [4], one
  CPU instance, dynamic batching up to 8, ``batchwire.retry_by_halves`` on) answers
  ``Y = 2 X`` unless ``FAULT`` holds a fault's marker. Fault variants (``FAULTS``),
  each tried once before the load, then chosen at random (unary: all four; streams:
  all but ``sleep``, a stream having no per-request deadline): ``raise`` (execute()
  raises; INTERNAL "model 'soak-faulty' version '1' failed: RuntimeError: injected
  fault 'raise'"), ``wrong_shape`` (Y of [n, 5]; INTERNAL from batchwire's output
  check, "output 'Y' has shape [n, 5], expected [n, 4]"), ``wrong_dtype`` (Y as
  float64; INTERNAL "output 'Y' has datatype FP64 (torch.float64), expected FP32"),
  ``sleep`` (execute() sleeps 50 ms, the call has a gRPC deadline of 5-20 ms;
  DEADLINE_EXCEEDED). Batches mix requests: a batch holding a ``raise`` marker
  fails and batchwire retries it by halves until the raising request is alone, so
  its batch-mates still get OK; the output check fails a whole batch and is not
  retried, so the model returns a wrong shape (dtype) only when every request of the
  batch asks for it, and raises when a batch mixes such markers with other requests
  (the halves are retried); a ``sleep`` batch answers after 50 ms, its batch-mates
  OK. Requests of the other kinds go to ``soak-faulty`` too and are judged as for
  any model.
* A reloader unloads a random model (RepositoryModelUnload), waits 0.05-0.5 s and
  loads it again (RepositoryModelLoad), every ``reload_every`` seconds or so.

Outcomes, one per request: ``OK``, ``INVALID_ARGUMENT``, ``NOT_FOUND``,
``UNAVAILABLE``, ``INTERNAL``, ``DEADLINE_EXCEEDED``, ``CANCELLED``, ``LOST`` (no answer
within ``ANSWER_BOUND_S``: the client then cancels it) and ``OTHER``. An answer counts
as its status only where the request's kind allows it: ``ok`` -> OK; ``malformed`` ->
INVALID_ARGUMENT; ``unknown_model`` -> NOT_FOUND; ``deadline`` -> OK or
DEADLINE_EXCEEDED; ``cancel`` -> OK or CANCELLED, CANCELLED only when the client's
own ``cancel()`` took effect; ``fault`` -> its variant's status, with a message that
names the fault (the variant's words above; for ``sleep``, "deadline"); and
UNAVAILABLE for any kind but ``unknown_model`` only when the call overlapped an
unload/load of its model. Everything else is ``OTHER`` (an OK answer with the wrong
model name or number of outputs included), and a sample of them is kept in the JSON.
Stream answers carry no status code: an error message counts as the code its unary
twin got in the probes (the same malformed request or unknown model), as the fault's
status when it holds the fault's words (the shape message names the batch size, so
it is not matched whole), or as UNAVAILABLE when it says the model has no ready
version.

Phases: probes; warm-up (``--warmup`` seconds of the same load, reloads included);
a pause (traffic stops, the server goes quiet: no statistics change for 0.5 s and no
request pending, waited for up to 15 s) where the resources are read; the measured load; the same pause,
and the resources and counters are read again.

Checks (each reported pass/fail in the JSON; the exit status is 1 when any fails):

* ``one_outcome_each``: requests sent == outcomes counted, no stream answer for an
  unknown or already answered id; ``none_lost``: LOST == 0; ``none_other``: OTHER == 0;
  ``streams_end_ok``: every stream the client closed (not cancelled) ended with OK;
  ``reloads``: at least one unload/load cycle, none refused;
  ``probes``: every malformed variant got INVALID_ARGUMENT, the unknown model
  NOT_FOUND, every fault variant its status and a message naming the fault.
* ``server_log_clean``: the server's log holds no ERROR or CRITICAL record (its
  count and most common messages are in the JSON and printed). None is expected:
  batchwire logs a model's failures at WARNING, and cancellations, deadlines and
  malformed requests are the callers' business.
* ``statistics_match_metrics`` per model: ModelStatistics success and fail counts
  equal /metrics' ``nv_inference_request_success`` and the sum of
  ``batchwire_request_failures_total``, read at the same quiet moment.
* ``success_matches_client`` per model: client OK <= server successes <= client OK +
  the well-formed requests the client gave up on (CANCELLED, DEADLINE_EXCEEDED, LOST:
  such a call may still have run; this is the part that is not comparable one to one).
* ``invalid_matches_client`` per model: client INVALID_ARGUMENT <= the server's
  ``invalid_argument`` failures <= that + the malformed requests the client gave up on
  (those in a stream it cancelled, or LOST); without cancelled streams it is exact.
* ``internal_matches_client`` per model: client INTERNAL <= the server's ``backend``
  failures <= that + the fault requests the client gave up on (in a stream it
  cancelled, a ``sleep`` past its deadline, or LOST); 0 for the example models.
* ``abandoned_within_client`` per model: the server's ``cancelled`` +
  ``deadline_exceeded`` failures <= the client's CANCELLED + DEADLINE_EXCEEDED + LOST
  (a cancellation may or may not reach the model).
* ``counted_within_sent`` per model: the server's successes + failures <= requests
  the client sent to it (requests to an unloaded model are not counted by the server).
* Resources of the server process, at the end of the run against the end of warm-up,
  both read in the quiet pause: ``rss``: end <= start x 1.25 + 50 MiB (VmRSS, from
  /proc/<pid>/status); ``fds``: end <= start + 16 (entries of /proc/<pid>/fd);
  ``threads``: end <= start + 8 (Threads, /proc/<pid>/status); ``asyncio_tasks``:
  end <= start + 16 (the server's ``batchwire_asyncio_tasks`` gauge on /metrics;
  reported as not measured where a server lacks it). Off Linux the /proc figures are
  not measured and their checks are skipped.

Writes ``soak.json`` (everything above; requests by outcome, kind, model, malformed
and fault variant, ``faults_injected`` and ``malformed_tried`` with the probes
counted; the resource and throughput samples once a second) and ``soak.png`` (RSS
and answers per second over time) into ``--out``, and the server's log as
``soak-server.log``. Figures depend on the machine; no timing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc
from batchwire.serve_process import ServerProcess

#: Every outcome a request can get (the JSON lists each, zeros included).
OUTCOMES = (
    "OK",
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "UNAVAILABLE",
    "INTERNAL",
    "DEADLINE_EXCEEDED",
    "CANCELLED",
    "LOST",
    "OTHER",
)
#: Request kind -> the outcomes it may get (UNAVAILABLE also needs a reload overlap);
#: a ``fault`` request may get its variant's code (:data:`FAULTS`) or UNAVAILABLE.
ALLOWED: dict[str, frozenset[str]] = {
    "ok": frozenset({"OK", "UNAVAILABLE"}),
    "malformed": frozenset({"INVALID_ARGUMENT", "UNAVAILABLE"}),
    "unknown_model": frozenset({"NOT_FOUND"}),
    "deadline": frozenset({"OK", "DEADLINE_EXCEEDED", "UNAVAILABLE"}),
    "cancel": frozenset({"OK", "CANCELLED", "UNAVAILABLE"}),
}
UNARY_KINDS = (
    ("ok", 66),
    ("malformed", 10),
    ("unknown_model", 4),
    ("deadline", 8),
    ("cancel", 8),
    ("fault", 4),
)
STREAM_KINDS = (("ok", 82), ("malformed", 10), ("unknown_model", 5), ("fault", 3))
STREAM_CANCEL_SHARE = 0.2
UNKNOWN_MODEL = "soak-no-such-model"
#: Seconds a request may go unanswered before it counts as LOST.
ANSWER_BOUND_S = 20.0
#: Words of the server's stream error for a model without a ready version.
_UNAVAILABLE_WORDS = ("no ready version", "not ready", "unloaded", "unloading", "loading")

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Bounds:
    """How far the server's resources may grow from the end of warm-up to the end."""

    rss_factor: float = 1.25
    rss_slack_bytes: int = 50 * MIB
    fds: int = 16
    threads: int = 8
    asyncio_tasks: int = 16


@dataclass(frozen=True, slots=True)
class Plan:
    """Seconds in all (warm-up included), warm-up, mean seconds between reloads, callers."""

    seconds: float
    warmup: float
    reload_every: float
    workers: int
    streams: int


DEFAULT = Plan(seconds=180.0, warmup=30.0, reload_every=2.0, workers=12, streams=4)
SHORT = Plan(seconds=25.0, warmup=6.0, reload_every=1.0, workers=12, streams=4)


# -- the faulty model ----------------------------------------------------------------------

#: The soak's own model, written into the temporary repository next to the examples.
FAULTY_MODEL = "soak-faulty"

_FAULTY_CONFIG = f"""\
name: "{FAULTY_MODEL}"
backend: "python"
max_batch_size: 8
input {{ name: "X" data_type: TYPE_FP32 dims: [ 4 ] }}
input {{ name: "FAULT" data_type: TYPE_INT32 dims: [ 1 ] }}
output {{ name: "Y" data_type: TYPE_FP32 dims: [ 4 ] }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
dynamic_batching {{ max_queue_delay_microseconds: 500 }}
parameters {{ key: "batchwire.retry_by_halves" value: {{ string_value: "true" }} }}
parameters {{ key: "batchwire.inline_below_us" value: {{ string_value: "0" }} }}
"""

#: MARKERS becomes those of :data:`FAULTS` (negative: a well-formed request's FAULT is a
#: random 1-999, no fault).
_FAULTY_SOURCE = """\
import time

import torch

RAISE, WRONG_SHAPE, WRONG_DTYPE, SLEEP = MARKERS


class BatchwireModel:
    def execute(self, inputs):
        x, fault = inputs["X"], inputs["FAULT"][:, 0]
        if bool((fault == RAISE).any()):
            raise RuntimeError("injected fault 'raise'")
        shape, dtype = fault == WRONG_SHAPE, fault == WRONG_DTYPE
        if bool(shape.all()):
            return {"Y": torch.zeros(x.shape[0], 5)}
        if bool(dtype.all()):
            return {"Y": (x * 2).double()}
        if bool((shape | dtype).any()):
            # The output check fails a whole batch and is not retried by halves, so a
            # batch mixing these markers with other rows raises instead: the halves
            # are retried until each fault is alone with its own kind.
            raise RuntimeError("a batch mixing wrong-output markers with other rows")
        if bool((fault == SLEEP).any()):
            time.sleep(0.05)
        return {"Y": x * 2}
"""


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault variant: its marker, the status it must get, words its message must hold."""

    marker: int
    code: str
    message: re.Pattern[str]
    #: Sent on streams too (a stream has no per-request deadline: not ``sleep``).
    streamed: bool = True
    #: The gRPC deadline (seconds) a unary request of this variant is sent with.
    deadline: tuple[float, float] | None = None


_WHERE = f"model '{FAULTY_MODEL}' version '1'"
FAULTS: dict[str, Fault] = {
    "raise": Fault(
        -1,
        "INTERNAL",
        re.compile(re.escape(f"{_WHERE} failed: RuntimeError: injected fault 'raise'")),
    ),
    "wrong_shape": Fault(
        -2,
        "INTERNAL",
        re.compile(re.escape(f"{_WHERE}: output 'Y' has shape [") + r"(\d+), 5\], expected \[\1, 4\]"),
    ),
    "wrong_dtype": Fault(
        -3,
        "INTERNAL",
        re.compile(
            re.escape(f"{_WHERE}: output 'Y' has datatype FP64 (torch.float64), expected FP32")
        ),
    ),
    # The model sleeps 50 ms, far from the hang watchdog's default 60 s.
    "sleep": Fault(
        -4, "DEADLINE_EXCEEDED", re.compile("deadline", re.I), streamed=False,
        deadline=(0.005, 0.02),
    ),
}  # fmt: skip


def write_faulty_model(repository: Path) -> None:
    """``<repository>/soak-faulty``: config.pbtxt and 1/model.py (backend python)."""
    folder = repository / FAULTY_MODEL
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(_FAULTY_CONFIG)
    markers = ", ".join(
        str(FAULTS[v].marker) for v in ("raise", "wrong_shape", "wrong_dtype", "sleep")
    )
    (folder / "1" / "model.py").write_text(_FAULTY_SOURCE.replace("MARKERS", markers))


# -- requests ------------------------------------------------------------------------------

_NUMPY = {"FP32": np.float32, "INT64": np.int64, "FP64": np.float64, "INT32": np.int32}
#: A datatype of another width, for the wrong-datatype variant.
_OTHER_DATATYPE = {"FP32": "FP64", "INT64": "INT32", "FP64": "FP32", "INT32": "INT64"}


def _array(datatype: str, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    if datatype.startswith("FP"):
        return rng.standard_normal(shape).astype(_NUMPY[datatype])
    return rng.integers(1, 1000, shape).astype(_NUMPY[datatype])  # token ids of the text model


def _request(
    model: str, tensors: list[tuple[str, str, list[int]]], rng: np.random.Generator
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    for name, datatype, shape in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(_array(datatype, shape, rng).tobytes())
    return request


@dataclass(slots=True)
class ModelRequests:
    """A model's well-formed request, its malformed and fault variants, its output count."""

    good: pb.ModelInferRequest
    malformed: dict[str, pb.ModelInferRequest]
    outputs: int
    #: Fault variant -> request (the faulty model only).
    faults: dict[str, pb.ModelInferRequest] = field(default_factory=dict)


def build_requests(metadata: pb.ModelMetadataResponse, seed: int) -> ModelRequests:
    """Requests for one model from its ModelMetadata (batch 1; variable dims of 8)."""
    rng = np.random.default_rng(seed)
    model = metadata.name
    tensors = [
        (t.name, t.datatype, [1] + [d if d > 0 else 8 for d in list(t.shape)[1:]])
        for t in metadata.inputs
    ]
    good = _request(model, tensors, rng)
    name, datatype, shape = tensors[0]
    fixed = [i for i, d in enumerate(metadata.inputs[0].shape) if i > 0 and d > 0]
    variants: dict[str, list[tuple[str, str, list[int]]]] = {
        "extra_dimension": [(name, datatype, [*shape, 2]), *tensors[1:]],
        "wrong_datatype": [(name, _OTHER_DATATYPE[datatype], shape), *tensors[1:]],
        "unknown_input": [*tensors, ("SOAK_NOT_AN_INPUT", datatype, shape)],
    }
    if fixed:
        wrong = list(shape)
        wrong[fixed[0]] += 1
        variants["wrong_dimension"] = [(name, datatype, wrong), *tensors[1:]]
    malformed = {key: _request(model, value, rng) for key, value in variants.items()}
    short = pb.ModelInferRequest()
    short.CopyFrom(good)
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    malformed["wrong_byte_count"] = short
    malformed["missing_input"] = pb.ModelInferRequest(model_name=model)
    faults = {}
    if model == FAULTY_MODEL:
        marker_at = [t.name for t in metadata.inputs].index("FAULT")
        for variant, fault in FAULTS.items():
            request = pb.ModelInferRequest()
            request.CopyFrom(good)
            request.raw_input_contents[marker_at] = np.array([[fault.marker]], np.int32).tobytes()
            faults[variant] = request
    return ModelRequests(good, malformed, len(metadata.outputs), faults)


def _with_id(request: pb.ModelInferRequest, request_id: str) -> pb.ModelInferRequest:
    copy = pb.ModelInferRequest()
    copy.CopyFrom(request)
    copy.id = request_id
    return copy


# -- the server's process, from outside ----------------------------------------------------


def proc_resources(pid: int) -> dict[str, int | None]:
    """RSS bytes, open fds and threads of ``pid`` from /proc (None where unreadable)."""
    out: dict[str, int | None] = {"rss_bytes": None, "fds": None, "threads": None}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_bytes"] = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return out


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample on the /metrics page ``url``."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = []
    for line in text.splitlines():
        if line and not line.startswith("#") and (match := _SAMPLE.match(line)):
            labels = dict(_LABEL.findall(match.group(2) or ""))
            samples.append((match.group(1), labels, float(match.group(3))))
    return samples


@dataclass(slots=True)
class ServerCounters:
    """Per-model counters read from ModelStatistics and from /metrics at one moment."""

    #: model -> (success count, fail count) from ModelStatistics.
    statistics: dict[str, tuple[int, int]]
    #: model -> nv_inference_request_success.
    metrics_success: dict[str, int]
    #: model -> batchwire reason -> batchwire_request_failures_total.
    metrics_failures: dict[str, dict[str, int]]
    asyncio_tasks: int | None


# -- the load ------------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """What the client saw; every update happens on this process's event loop."""

    sent: int = 0
    by_outcome: Counter[str] = field(default_factory=Counter)
    by_model: dict[str, Counter[str]] = field(default_factory=dict)
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    sent_by_model: Counter[str] = field(default_factory=Counter)
    malformed_by_variant: Counter[str] = field(default_factory=Counter)
    faults_by_variant: Counter[str] = field(default_factory=Counter)
    unary: int = 0
    streamed: int = 0
    streams_opened: int = 0
    streams_cancelled: int = 0
    extra_answers: int = 0
    #: Streams the client closed that did not end with OK.
    streams_ended_badly: int = 0
    other_samples: list[dict[str, str]] = field(default_factory=list)
    ok_done: int = 0
    #: model -> kind -> requests the client gave up on (CANCELLED, DEADLINE_EXCEEDED, LOST).
    given_up: dict[str, Counter[str]] = field(default_factory=dict)

    def count_sent(self, model: str, kind: str, variant: str | None, streamed: bool) -> None:
        self.sent += 1
        self.sent_by_model[model] += 1
        if kind == "malformed":
            self.malformed_by_variant[str(variant)] += 1
        elif kind == "fault":
            self.faults_by_variant[str(variant)] += 1
        if streamed:
            self.streamed += 1
        else:
            self.unary += 1

    def record(self, model: str, kind: str, outcome: str, note: str = "") -> None:
        self.by_outcome[outcome] += 1
        self.by_model.setdefault(model, Counter())[outcome] += 1
        self.by_kind.setdefault(kind, Counter())[outcome] += 1
        if outcome == "OK":
            self.ok_done += 1
        elif outcome in ("CANCELLED", "DEADLINE_EXCEEDED", "LOST"):
            self.given_up.setdefault(model, Counter())[kind] += 1
        if outcome == "OTHER":
            self.record_note(note, model, kind)

    def record_note(self, note: str, model: str = "", kind: str = "") -> None:
        """Keep a sample of what went wrong (the first 20)."""
        if len(self.other_samples) < 20:
            self.other_samples.append({"model": model, "kind": kind, "what": note[:300]})

    @property
    def answered(self) -> int:
        return sum(self.by_outcome.values())


class Reloads:
    """Unload/load windows per model, to judge whether an UNAVAILABLE was expected."""

    def __init__(self) -> None:
        #: model -> [start, end] (end None while the model is not loaded again).
        self.windows: dict[str, list[list[float | None]]] = {}
        self.count = 0
        self.errors: list[str] = []
        #: time.monotonic() of each unload.
        self.times: list[float] = []

    def overlaps(self, model: str, began: float, ended: float) -> bool:
        for start, end in self.windows.get(model, ()):
            assert start is not None
            if start <= ended and (end is None or end >= began):
                return True
        return False


class Soak:
    """The load, the reloader and the sampler against one server."""

    def __init__(
        self,
        stub: pb_grpc.GRPCInferenceServiceStub,
        requests: dict[str, ModelRequests],
        known_messages: dict[str, str],
        seed: int,
    ) -> None:
        self.stub = stub
        self.requests = requests
        self.models = sorted(requests)
        #: Stream error message -> the status its unary twin got in the probes.
        self.known_messages = known_messages
        self.rng = random.Random(seed)
        self.tally = Tally()
        self.reloads = Reloads()
        self.stopping = False
        self._ids = 0

    # -- choices

    def _kind(self, table: tuple[tuple[str, int], ...]) -> str:
        kinds, weights = zip(*table, strict=True)
        kind: str = self.rng.choices(kinds, weights)[0]
        return kind

    def _pick(self, kind: str, streamed: bool) -> tuple[str, pb.ModelInferRequest, str | None]:
        """(model, request, malformed or fault variant) for one request of ``kind``."""
        if kind == "fault":
            faults = self.requests[FAULTY_MODEL].faults
            variant = self.rng.choice([v for v in faults if FAULTS[v].streamed or not streamed])
            return FAULTY_MODEL, faults[variant], variant
        model = self.rng.choice(self.models)
        requests = self.requests[model]
        if kind == "malformed":
            variant = self.rng.choice(sorted(requests.malformed))
            return model, requests.malformed[variant], variant
        if kind == "unknown_model":
            request = pb.ModelInferRequest()
            request.CopyFrom(requests.good)
            request.model_name = UNKNOWN_MODEL
            return UNKNOWN_MODEL, request, None
        return model, requests.good, None

    def _judge(
        self,
        model: str,
        kind: str,
        variant: str | None,
        code: str,
        began: float,
        response: pb.ModelInferResponse | None,
        message: str = "",
    ) -> tuple[str, str]:
        """(outcome, note) of an answer with status ``code`` to a request of ``kind``."""
        if kind == "fault":
            fault = FAULTS[str(variant)]
            if code not in (fault.code, "UNAVAILABLE"):
                return "OTHER", f"{code} for a '{variant}' fault"
            if code == fault.code and not fault.message.search(message):
                return "OTHER", f"{code} for a '{variant}' fault, not naming it"
        elif code not in ALLOWED[kind]:
            return "OTHER", f"{code} for a '{kind}' request"
        if code == "UNAVAILABLE" and not self.reloads.overlaps(model, began, time.monotonic()):
            return "OTHER", "UNAVAILABLE outside any unload/load of the model"
        if code == "OK":
            expected = self.requests[model].outputs
            if response is None or response.model_name != model:
                return "OTHER", "an OK answer naming another model"
            if len(response.outputs) != expected:
                return "OTHER", f"an OK answer with {len(response.outputs)} outputs, not {expected}"
        return code, ""

    # -- unary

    async def unary_worker(self) -> None:
        while not self.stopping:
            kind = self._kind(UNARY_KINDS)
            model, request, variant = self._pick(kind, streamed=False)
            self.tally.count_sent(model, kind, variant, streamed=False)
            try:
                outcome, note = await self._unary_once(model, kind, variant, request)
            except Exception as exc:  # a client bug must still give the request an outcome
                outcome, note = "OTHER", f"client error {type(exc).__name__}: {exc}"
            self.tally.record(model, kind, outcome, note)

    async def _unary_once(
        self, model: str, kind: str, variant: str | None, request: pb.ModelInferRequest
    ) -> tuple[str, str]:
        timeout = self.rng.uniform(0.0005, 0.005) if kind == "deadline" else None
        if kind == "fault" and (span := FAULTS[str(variant)].deadline) is not None:
            timeout = self.rng.uniform(*span)
        began = time.monotonic()
        call = self.stub.ModelInfer(request, timeout=timeout)
        if kind == "cancel":
            await asyncio.sleep(self.rng.uniform(0.0, 0.004))
            if call.cancel():  # True: the call had not finished, so CANCELLED is ours
                code = await asyncio.wait_for(call.code(), ANSWER_BOUND_S)
                if code is grpc.StatusCode.CANCELLED:
                    return "CANCELLED", ""
                return "OTHER", f"{code.name} after the client's cancel"
        try:
            code = await asyncio.wait_for(call.code(), ANSWER_BOUND_S)
        except asyncio.TimeoutError:
            call.cancel()
            return "LOST", ""
        if code is grpc.StatusCode.CANCELLED:
            return "OTHER", f"CANCELLED that the client did not ask for: {await call.details()}"
        response = await call if code is grpc.StatusCode.OK else None
        details = "" if response is not None else (await call.details() or "")
        outcome, note = self._judge(model, kind, variant, code.name, began, response, details)
        if outcome == "OTHER":
            note = f"{note}: {details}"
        return outcome, note

    # -- streams

    async def stream_worker(self, number: int) -> None:
        while not self.stopping:
            await self._one_stream(number)

    async def _one_stream(self, number: int) -> None:
        tally = self.tally
        tally.streams_opened += 1
        call = self.stub.ModelStreamInfer()
        bursts = self.rng.randint(1, 20)
        cancel_at = self.rng.randrange(bursts) if self.rng.random() < STREAM_CANCEL_SHARE else None
        # id -> (model, kind, variant, sent at); every id gets exactly one outcome.
        pending: dict[str, tuple[str, str, str | None, float]] = {}

        def settle_all(outcome: str, note: str = "") -> None:
            for model, kind, _, _ in pending.values():
                tally.record(model, kind, outcome, note)
            pending.clear()

        try:
            for burst in range(bursts):
                if self.stopping:
                    break
                for _ in range(self.rng.randint(1, 8)):
                    kind = self._kind(STREAM_KINDS)
                    model, request, variant = self._pick(kind, streamed=True)
                    self._ids += 1
                    request_id = f"s{number}-{self._ids}"
                    tally.count_sent(model, kind, variant, streamed=True)
                    pending[request_id] = (model, kind, variant, time.monotonic())
                    await call.write(_with_id(request, request_id))
                if burst == cancel_at:
                    await asyncio.sleep(self.rng.uniform(0.0, 0.004))
                    if call.cancel():
                        tally.streams_cancelled += 1
                        settle_all("CANCELLED")
                        return
                while pending:
                    try:
                        response = await asyncio.wait_for(call.read(), ANSWER_BOUND_S)
                    except asyncio.TimeoutError:
                        call.cancel()
                        settle_all("LOST")
                        return
                    if response is grpc.aio.EOF:
                        code = await call.code()
                        settle_all(
                            "OTHER", f"the stream ended ({code.name}) with requests unanswered"
                        )
                        return
                    self._stream_answer(response, pending)
            await call.done_writing()
            while (
                response := await asyncio.wait_for(call.read(), ANSWER_BOUND_S)
            ) is not grpc.aio.EOF:
                self._stream_answer(response, pending)
            if (code := await call.code()) is not grpc.StatusCode.OK:
                tally.streams_ended_badly += 1
                tally.record_note(f"a stream closed by the client ended {code.name}")
        except grpc.aio.AioRpcError as exc:
            settle_all("OTHER", f"the stream failed: {exc.code().name}: {exc.details()}")
        except Exception as exc:
            call.cancel()
            settle_all("OTHER", f"client error {type(exc).__name__}: {exc}")

    def _stream_answer(
        self,
        response: pb.ModelStreamInferResponse,
        pending: dict[str, tuple[str, str, str | None, float]],
    ) -> None:
        entry = pending.pop(response.infer_response.id, None)
        if entry is None:
            self.tally.extra_answers += 1
            return
        model, kind, variant, began = entry
        message = response.error_message
        if not message:
            outcome, note = self._judge(model, kind, variant, "OK", began, response.infer_response)
        else:
            code = self.known_messages.get(message)
            if code is None and kind == "fault":
                # Named by its words, not matched whole: a shape message names the batch size.
                fault = FAULTS[str(variant)]
                code = fault.code if fault.message.search(message) else None
            if code is None and any(word in message for word in _UNAVAILABLE_WORDS):
                code = "UNAVAILABLE"
            if code is None:
                outcome, note = "OTHER", f"stream error: {message}"
            else:
                outcome, note = self._judge(model, kind, variant, code, began, None, message)
                if outcome == "OTHER":
                    note = f"{note}: {message}"
        self.tally.record(model, kind, outcome, note)

    # -- reloads

    async def reloader(self, every: float) -> None:
        reloads = self.reloads
        while not self.stopping:
            await asyncio.sleep(every * self.rng.uniform(0.5, 1.5))
            if self.stopping:
                break
            model = self.rng.choice(self.models)
            unloaded_at = time.monotonic()
            window: list[float | None] = [unloaded_at, None]
            reloads.windows.setdefault(model, []).append(window)
            reloads.times.append(unloaded_at)
            try:
                await self.stub.RepositoryModelUnload(
                    pb.RepositoryModelUnloadRequest(model_name=model), timeout=60
                )
                await asyncio.sleep(self.rng.uniform(0.05, 0.5))
            except grpc.aio.AioRpcError as exc:
                reloads.errors.append(f"unload {model}: {exc.code().name}: {exc.details()}")
            finally:
                # Always load it again, so that the run ends with every model loaded.
                try:
                    await self.stub.RepositoryModelLoad(
                        pb.RepositoryModelLoadRequest(model_name=model), timeout=60
                    )
                except grpc.aio.AioRpcError as exc:
                    reloads.errors.append(f"load {model}: {exc.code().name}: {exc.details()}")
                window[1] = time.monotonic()
                reloads.count += 1

    async def run_load(self, seconds: float, reload_every: float, plan: Plan) -> None:
        """Run every worker and the reloader for ``seconds``, then let them finish."""
        self.stopping = False
        tasks = [asyncio.ensure_future(self.unary_worker()) for _ in range(plan.workers)]
        tasks += [asyncio.ensure_future(self.stream_worker(n)) for n in range(plan.streams)]
        tasks.append(asyncio.ensure_future(self.reloader(reload_every)))
        await asyncio.sleep(seconds)
        self.stopping = True
        await asyncio.gather(*tasks)


# -- the server's counters -----------------------------------------------------------------


async def read_counters(
    stub: pb_grpc.GRPCInferenceServiceStub, models: list[str], metrics_url: str
) -> ServerCounters:
    statistics: dict[str, tuple[int, int]] = {}
    for model in models:
        reply = await stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=10)
        success = sum(s.inference_stats.success.count for s in reply.model_stats)
        fail = sum(s.inference_stats.fail.count for s in reply.model_stats)
        statistics[model] = (success, fail)
    samples = await asyncio.to_thread(scrape, metrics_url)
    success_m: dict[str, int] = dict.fromkeys(models, 0)
    failures_m: dict[str, dict[str, int]] = {m: {} for m in models}
    tasks: int | None = None
    for name, labels, value in samples:
        model = labels.get("model", "")
        if name == "nv_inference_request_success" and model in success_m:
            success_m[model] += int(value)
        elif name == "batchwire_request_failures_total" and model in failures_m:
            reasons = failures_m[model]
            reasons[labels["reason"]] = reasons.get(labels["reason"], 0) + int(value)
        elif name == "batchwire_asyncio_tasks":
            tasks = int(value)
    return ServerCounters(statistics, success_m, failures_m, tasks)


async def quiesce(
    stub: pb_grpc.GRPCInferenceServiceStub, models: list[str], metrics_url: str
) -> ServerCounters:
    """Wait (up to 15 s) until no statistics change for 0.5 s and nothing is pending."""
    deadline = time.monotonic() + 15.0
    last = await read_counters(stub, models, metrics_url)
    while True:
        await asyncio.sleep(0.5)
        now = await read_counters(stub, models, metrics_url)
        pending = await asyncio.to_thread(scrape, metrics_url)
        queued = sum(v for n, _, v in pending if n == "nv_inference_pending_request_count")
        if (now.statistics == last.statistics and not queued) or time.monotonic() > deadline:
            return now
        last = now


# -- the run -------------------------------------------------------------------------------


async def _probe(
    stub: pb_grpc.GRPCInferenceServiceStub, requests: dict[str, ModelRequests]
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Try each malformed variant, the unknown model and each fault once, unary.

    Returns (message -> code of the malformed and unknown-model probes, one row per
    probe). A row's ``message_ok``: a fault's message names it (``FAULTS``); other
    messages are not empty.
    """
    messages: dict[str, str] = {}
    rows = []
    probes: list[tuple[str, str, str, pb.ModelInferRequest, Fault | None]] = [
        (f"{m}/{v}", "malformed", "INVALID_ARGUMENT", r, None)
        for m in sorted(requests)
        for v, r in sorted(requests[m].malformed.items())
    ]
    unknown = pb.ModelInferRequest()
    unknown.CopyFrom(next(iter(requests.values())).good)
    unknown.model_name = UNKNOWN_MODEL
    probes.append((UNKNOWN_MODEL, "unknown_model", "NOT_FOUND", unknown, None))
    faults = requests[FAULTY_MODEL].faults
    probes += [(f"{FAULTY_MODEL}/{v}", "fault", f.code, faults[v], f) for v, f in FAULTS.items()]
    for label, kind, expected, request, fault in probes:
        timeout = 30.0 if fault is None or fault.deadline is None else max(fault.deadline)
        try:
            await stub.ModelInfer(request, timeout=timeout)
            code, details = "OK", ""
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code().name, exc.details() or ""
        named = bool(details) if fault is None else bool(fault.message.search(details))
        rows.append(
            {
                "probe": label,
                "kind": kind,
                "expected": expected,
                "got": code,
                "message": details,
                "message_ok": named,
            }
        )
        if code == expected and fault is None:
            messages[details] = code
    return messages, rows


def _resources(pid: int, counters: ServerCounters) -> dict[str, int | None]:
    return {**proc_resources(pid), "asyncio_tasks": counters.asyncio_tasks}


def _check(ok: bool | None, detail: str) -> dict[str, Any]:
    """A check's row: ``ok`` None means not measured (skipped, not failed)."""
    return {"ok": ok, "detail": detail}


def check_resources(
    start: dict[str, int | None], end: dict[str, int | None], bounds: Bounds
) -> dict[str, dict[str, Any]]:
    rules: dict[str, tuple[Callable[[int], float], str]] = {
        "rss": (
            lambda s: s * bounds.rss_factor + bounds.rss_slack_bytes,
            f"end <= start x {bounds.rss_factor} + {bounds.rss_slack_bytes // MIB} MiB",
        ),
        "fds": (lambda s: s + bounds.fds, f"end <= start + {bounds.fds}"),
        "threads": (lambda s: s + bounds.threads, f"end <= start + {bounds.threads}"),
        "asyncio_tasks": (
            lambda s: s + bounds.asyncio_tasks,
            f"end <= start + {bounds.asyncio_tasks}",
        ),
    }
    keys = {
        "rss": "rss_bytes",
        "fds": "fds",
        "threads": "threads",
        "asyncio_tasks": "asyncio_tasks",
    }
    checks = {}
    for name, (limit, rule) in rules.items():
        first, last = start[keys[name]], end[keys[name]]
        if first is None or last is None:
            checks[name] = _check(None, f"not measured ({rule})")
        else:
            checks[name] = _check(
                last <= limit(first),
                f"start {first}, end {last}, limit {limit(first):.0f} ({rule})",
            )
    return checks


def check_counters(
    tally: Tally, before: ServerCounters, after: ServerCounters, models: list[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per-model server counter deltas against the client's counts: (checks, table)."""
    table: dict[str, Any] = {}
    problems: dict[str, list[str]] = {
        "statistics_match_metrics": [],
        "success_matches_client": [],
        "invalid_matches_client": [],
        "internal_matches_client": [],
        "abandoned_within_client": [],
        "counted_within_sent": [],
    }
    for model in models:
        success = after.statistics[model][0] - before.statistics[model][0]
        fail = after.statistics[model][1] - before.statistics[model][1]
        m_success = after.metrics_success[model] - before.metrics_success[model]
        reasons = {
            r: n - before.metrics_failures[model].get(r, 0)
            for r, n in after.metrics_failures[model].items()
        }
        client = tally.by_model.get(model, Counter())
        given_up = tally.given_up.get(model, Counter())
        gave_up = given_up.total()
        gave_up_malformed = given_up["malformed"]
        gave_up_wellformed = gave_up - gave_up_malformed
        invalid = reasons.get("invalid_argument", 0)
        # ModelExecutionError (a model that raised, or outputs failing the check).
        backend = reasons.get("backend", 0)
        abandoned = reasons.get("cancelled", 0) + reasons.get("deadline_exceeded", 0)
        table[model] = {
            "sent": tally.sent_by_model[model],
            "client": {o: client[o] for o in OUTCOMES},
            "statistics_success": success,
            "statistics_fail": fail,
            "metrics_success": m_success,
            "metrics_failures": reasons,
            "given_up_by_kind": dict(given_up),
            "success_gap": success - client["OK"],
            "invalid_gap": invalid - client["INVALID_ARGUMENT"],
            "internal_gap": backend - client["INTERNAL"],
        }
        if success != m_success or fail != sum(reasons.values()):
            problems["statistics_match_metrics"].append(
                f"{model}: ModelStatistics {success}/{fail} vs /metrics "
                f"{m_success}/{sum(reasons.values())}"
            )
        if not client["OK"] <= success <= client["OK"] + gave_up_wellformed:
            problems["success_matches_client"].append(
                f"{model}: server {success} not within client OK {client['OK']} "
                f".. +{gave_up_wellformed}"
            )
        if (
            not client["INVALID_ARGUMENT"]
            <= invalid
            <= client["INVALID_ARGUMENT"] + gave_up_malformed
        ):
            problems["invalid_matches_client"].append(
                f"{model}: server {invalid} not within client {client['INVALID_ARGUMENT']} "
                f".. +{gave_up_malformed}"
            )
        if not client["INTERNAL"] <= backend <= client["INTERNAL"] + given_up["fault"]:
            problems["internal_matches_client"].append(
                f"{model}: server backend failures {backend} not within client INTERNAL "
                f"{client['INTERNAL']} .. +{given_up['fault']}"
            )
        if abandoned > gave_up:
            problems["abandoned_within_client"].append(
                f"{model}: server cancelled+deadline {abandoned} > client {gave_up}"
            )
        if success + fail > tally.sent_by_model[model]:
            problems["counted_within_sent"].append(
                f"{model}: server counted {success + fail} > sent {tally.sent_by_model[model]}"
            )
    checks = {
        name: _check(not found, "; ".join(found) or f"holds for {', '.join(models)}")
        for name, found in problems.items()
    }
    return checks, table


async def _sampler(
    soak: Soak, pid: int, metrics_url: str, samples: list[dict[str, Any]], began: float
) -> None:
    last_t, last_answered, last_ok = time.monotonic(), 0, 0
    while True:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        tally = soak.tally
        try:
            tasks = next(
                (int(v) for n, _, v in await asyncio.to_thread(scrape, metrics_url)
                 if n == "batchwire_asyncio_tasks"),
                None,
            )  # fmt: skip
        except OSError:
            tasks = None
        span = now - last_t
        samples.append(
            {
                "t": round(now - began, 2),
                **proc_resources(pid),
                "asyncio_tasks": tasks,
                "answers_per_s": round((tally.answered - last_answered) / span, 1),
                "ok_per_s": round((tally.ok_done - last_ok) / span, 1),
            }
        )
        last_t, last_answered, last_ok = now, tally.answered, tally.ok_done


async def soak_server(server: ServerProcess, plan: Plan, seed: int) -> dict[str, Any]:
    """Drive ``server`` through the phases; everything the report needs."""
    assert server.pid is not None and server.metrics_url is not None
    pid, metrics_url = server.pid, server.metrics_url
    options = [("grpc.max_receive_message_length", 2**31 - 1)]
    async with grpc.aio.insecure_channel(server.address, options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        index = await stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=30)
        models = sorted(m.name for m in index.models)
        requests = {}
        for n, model in enumerate(models):
            metadata = await stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=30)
            requests[model] = build_requests(metadata, seed + n)
        known, probes = await _probe(stub, requests)
        soak = Soak(stub, requests, known, seed)
        counters_before = await read_counters(stub, models, metrics_url)
        samples: list[dict[str, Any]] = []
        began = time.monotonic()
        sampler = asyncio.ensure_future(_sampler(soak, pid, metrics_url, samples, began))
        try:
            await soak.run_load(plan.warmup, plan.reload_every, plan)
            warm = await quiesce(stub, models, metrics_url)
            start = _resources(pid, warm)
            warmup_ended = time.monotonic() - began
            await soak.run_load(plan.seconds - plan.warmup, plan.reload_every, plan)
            counters_after = await quiesce(stub, models, metrics_url)
            end = _resources(pid, counters_after)
        finally:
            sampler.cancel()
    return {
        "models": models,
        "probes": probes,
        "soak": soak,
        "counters_before": counters_before,
        "counters_after": counters_after,
        "start": start,
        "end": end,
        "samples": samples,
        "warmup_ended_s": round(warmup_ended, 2),
        "reload_times_s": [round(t - began, 2) for t in soak.reloads.times],
    }


def run(out: Path, plan: Plan, seed: int = 0, bounds: Bounds | None = None) -> dict[str, Any]:
    """The whole soak; writes soak.json and soak.png into ``out`` and returns the report."""
    from batchwire.examples.export import export_examples

    bounds = bounds or Bounds()
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="batchwire-soak-") as tmp:
        repo = Path(tmp)
        export_examples(repo)
        write_faulty_model(repo)
        server = ServerProcess(
            repo,
            "--model-control-mode", "explicit",
            "--load-model", "*",
            metrics=True,
            log_path=out / "soak-server.log",
        )  # fmt: skip
        with server:
            result = _run_loop(soak_server(server, plan, seed))
    soak: Soak = result["soak"]
    tally = soak.tally
    models: list[str] = result["models"]
    counter_checks, table = check_counters(
        tally, result["counters_before"], result["counters_after"], models
    )
    probes = result["probes"]
    log = server_log_errors(out / "soak-server.log")
    bad_probes = [p for p in probes if p["got"] != p["expected"] or not p["message_ok"]]
    by_outcome = {o: tally.by_outcome[o] for o in OUTCOMES}
    checks: dict[str, dict[str, Any]] = {
        "one_outcome_each": _check(
            tally.sent == tally.answered and tally.extra_answers == 0,
            f"sent {tally.sent}, outcomes {tally.answered}, extra answers {tally.extra_answers}",
        ),
        "none_lost": _check(by_outcome["LOST"] == 0, f"LOST {by_outcome['LOST']}"),
        "streams_end_ok": _check(
            tally.streams_ended_badly == 0,
            f"{tally.streams_ended_badly} of {tally.streams_opened - tally.streams_cancelled} "
            "streams the client closed ended with a status other than OK",
        ),
        "none_other": _check(by_outcome["OTHER"] == 0, f"OTHER {by_outcome['OTHER']}"),
        "probes": _check(
            not bad_probes,
            "; ".join(f"{p['probe']}: {p['got']} ({p['message']})" for p in bad_probes)
            or f"{len(probes)} probes answered as expected",
        ),
        "reloads": _check(
            soak.reloads.count > 0 and not soak.reloads.errors,
            f"{soak.reloads.count} unload/load cycles, {len(soak.reloads.errors)} errors",
        ),
        "server_log_clean": _check(
            None if log["records"] is None else log["records"] == 0,
            f"{log['records']} ERROR/CRITICAL records in the server's log"
            if log["records"] is not None
            else "the server's log could not be read",
        ),
        **counter_checks,
        **check_resources(result["start"], result["end"], bounds),
    }
    passed = all(c["ok"] is not False for c in checks.values())
    malformed = sum(tally.malformed_by_variant.values())
    faults = sum(tally.faults_by_variant.values())
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "plan": asdict(plan),
        "seed": seed,
        "answer_bound_s": ANSWER_BOUND_S,
        "bounds": asdict(bounds),
        "passed": passed,
        "checks": checks,
        "requests": {
            "sent": tally.sent,
            "answered": tally.answered,
            "unary": tally.unary,
            "streamed": tally.streamed,
            "streams_opened": tally.streams_opened,
            "streams_cancelled": tally.streams_cancelled,
            "by_outcome": by_outcome,
            "by_kind": {k: dict(v) for k, v in sorted(tally.by_kind.items())},
            "by_model": {m: dict(v) for m, v in sorted(tally.by_model.items())},
            "cancellations": by_outcome["CANCELLED"],
            "malformed_tried": malformed + sum(p["expected"] == "INVALID_ARGUMENT" for p in probes),
            "malformed_by_variant": dict(sorted(tally.malformed_by_variant.items())),
            "faults_injected": faults + sum(p["kind"] == "fault" for p in probes),
            "faults_by_variant": dict(sorted(tally.faults_by_variant.items())),
            "unknown_model": tally.by_kind.get("unknown_model", Counter()).total(),
            "short_deadlines": tally.by_kind.get("deadline", Counter()).total(),
            "lost": by_outcome["LOST"],
            "extra_answers": tally.extra_answers,
            "other_samples": tally.other_samples,
        },
        "reloads": {"count": soak.reloads.count, "errors": soak.reloads.errors},
        "probes": probes,
        "counters": table,
        "resources": {
            "start": result["start"],
            "end": result["end"],
            "how": {
                "when": "start: the quiet pause after warm-up; end: the quiet pause after the load",
                "rss_bytes": "VmRSS of the server process, /proc/<pid>/status",
                "fds": "entries of /proc/<pid>/fd",
                "threads": "Threads of /proc/<pid>/status",
                "asyncio_tasks": "batchwire_asyncio_tasks on the server's /metrics "
                "(asyncio.all_tasks of its event loop, read at scrape time)",
            },
        },
        "warmup_ended_s": result["warmup_ended_s"],
        "reload_times_s": result["reload_times_s"],
        "server_log": log,
        "samples": result["samples"],
    }
    (out / "soak.json").write_text(json.dumps(report, indent=2))
    plot(report, out / "soak.png")
    return report


_LOG_LEVEL = re.compile(r"^\S+ \S+ (ERROR|CRITICAL) (.*)$")


def server_log_errors(path: Path) -> dict[str, Any]:
    """ERROR and CRITICAL records of the server's log, counted by their first line.

    Checked (``server_log_clean``: none): nothing the soak does is a server fault.
    Clients that cancel or run out of their deadline, malformed requests and the
    faulty model's failures are the callers' or the model's business; batchwire
    answers them and logs a model's failure at WARNING.
    """
    by_message: Counter[str] = Counter()
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"records": None, "by_message": {}}
    for line in lines:
        if match := _LOG_LEVEL.match(line):
            # Numbers (ids, addresses, milliseconds) vary between records of one kind.
            by_message[re.sub(r"0x[0-9a-f]+|\d+(\.\d+)?", "N", match.group(2))[:160]] += 1
    return {"records": by_message.total(), "by_message": dict(by_message.most_common(10))}


def _run_loop(main: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    ts = [s["t"] for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    top.plot(ts, [(s["rss_bytes"] or 0) / MIB for s in samples], color="tab:blue")
    top.set_ylabel("server RSS (MiB)")
    top.set_ylim(bottom=0)
    bottom.plot(ts, [s["answers_per_s"] for s in samples], label="answers / s")
    bottom.plot(ts, [s["ok_per_s"] for s in samples], label="OK / s")
    bottom.set_ylabel("requests / s")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="lower right")
    for axis in (top, bottom):
        axis.axvspan(0, report["warmup_ended_s"], color="grey", alpha=0.15, lw=0)
        for t in report["reload_times_s"]:
            axis.axvline(t, color="tab:red", alpha=0.12, lw=0.8)
        axis.grid(True, alpha=0.3)
    verdict = "passed" if report["passed"] else "FAILED"
    top.set_title(
        f"soak: {report['requests']['sent']} requests, {report['reloads']['count']} reloads "
        f"(red), warm-up shaded; checks {verdict}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the soak with command-line ``argv``; 0 when every check passed, else 1."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/soak"))
    parser.add_argument("--short", action="store_true", help="25 s in all (CI)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="the whole run, warm-up included"
    )
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds before the resource baseline"
    )
    parser.add_argument("--workers", type=int, default=None, help="unary callers")
    parser.add_argument("--streams", type=int, default=None, help="stream callers")
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args(argv)
    plan = SHORT if ns.short else DEFAULT
    plan = Plan(
        seconds=ns.seconds if ns.seconds is not None else plan.seconds,
        warmup=ns.warmup if ns.warmup is not None else plan.warmup,
        reload_every=plan.reload_every,
        workers=ns.workers if ns.workers is not None else plan.workers,
        streams=ns.streams if ns.streams is not None else plan.streams,
    )
    if not 0 < plan.warmup < plan.seconds:
        parser.error(
            f"--warmup must be within (0, --seconds), got {plan.warmup} and {plan.seconds}"
        )
    report = run(ns.out, plan, ns.seed)
    requests = report["requests"]
    print(
        f"sent {requests['sent']} ({requests['unary']} unary, {requests['streamed']} on "
        f"{requests['streams_opened']} streams), reloads {report['reloads']['count']}"
    )
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in requests["by_outcome"].items()))
    print(
        f"faults injected {requests['faults_injected']} (probes included; under load: "
        + ", ".join(f"{k} {v}" for k, v in requests["faults_by_variant"].items())
        + f"), malformed inputs tried {requests['malformed_tried']}"
    )
    for name, check in report["checks"].items():
        verdict = {True: "pass", False: "FAIL", None: "skipped"}[check["ok"]]
        print(f"{name}: {verdict} ({check['detail']})")
    log = report["server_log"]
    print(f"server log: {log['records']} ERROR/CRITICAL records")
    for message, count in log["by_message"].items():
        print(f"  {count} x {message}")
    print(f"wrote {ns.out / 'soak.json'} and {ns.out / 'soak.png'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
