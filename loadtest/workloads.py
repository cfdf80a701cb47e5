"""Pre-encoded inference requests for any served model.

Each model's :class:`Workload` builds a pool of ready-to-send
``ModelInferRequest`` messages once, so that the load generator only picks
one and sends it: no numpy, no protobuf building on the hot path.

Where the requests come from (:func:`workload_for`):

- the built-in examples (``mlp``, ``cnn``, ``text``, ``null``) keep their
  hand-made workloads (random batch sizes 1..4, random text lengths) when the
  served model has the example's inputs and no ``--shape`` or
  ``--input-data`` is given for it;
- any other model gets random data generated from its ModelMetadata and
  ModelConfig (:mod:`batchwire.loadtest.inputs`), or the requests of its
  ``--input-data`` file.

``batchwire loadtest`` resolves the workloads once (:func:`resolve_workloads`),
writes the pools to ``<out>/requests/`` with an index ``<out>/workloads.json``
(:func:`write_workloads`), and every Locust process reads them back
(:func:`read_workloads`): all processes send the same, already validated
requests.

Only numpy, the generated protobufs and :mod:`batchwire.loadtest.inputs` are
imported at module level (no torch, no server): this module runs inside every
Locust process. The metadata queries import :mod:`batchwire.clients` when
they run.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from batchwire.core.datatypes import WIRE_DTYPES, serialize_bytes, v2_of_numpy
from batchwire.loadtest.inputs import (
    InputData,
    InputSpecError,
    ModelInputs,
    TensorSpec,
    check_batch_size,
    load_input_data,
    random_tensor,
    request_shapes,
    shape_text,
)
from batchwire.protos import grpc_service_pb2 as pb

#: Requests pre-encoded per model; the user picks one at random for each call.
POOL_SIZE = 64
#: A generated pool stops growing at this size (large inputs get fewer, reused requests).
POOL_BYTES = 64 * 2**20
#: Largest request the load generator sends (its channels' message size limit).
MAX_REQUEST_BYTES = 64 * 2**20
#: The index of the pools written for the Locust processes.
WORKLOADS_FILE = "workloads.json"
WORKLOADS_FORMAT = 1

#: (rng, batch size) -> {input name: array}, one request's inputs.
MakeInputs = Callable[[np.random.Generator, int], dict[str, np.ndarray]]


class ModelNotServedError(InputSpecError):
    """A model named with ``--models`` is not in the server's repository."""


class ServerQueryError(RuntimeError):
    """The server did not answer a metadata query, or a model is not ready."""


def encode_request(
    model: str, inputs: Mapping[str, np.ndarray], datatypes: Mapping[str, str] | None = None
) -> pb.ModelInferRequest:
    """A ModelInferRequest carrying ``inputs`` as little-endian raw contents.

    ``datatypes`` gives an input's v2 datatype where the array's dtype does
    not (BF16 travels as uint16 bit patterns); otherwise it follows the dtype.
    """
    request = pb.ModelInferRequest(model_name=model)
    for name, array in inputs.items():
        datatype = (datatypes or {}).get(name) or v2_of_numpy(array.dtype)
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if datatype == "BYTES":
            raw = serialize_bytes(array)
        else:
            raw = np.ascontiguousarray(array, WIRE_DTYPES[datatype]).tobytes()
        request.raw_input_contents.append(raw)
    return request


@dataclass(frozen=True)
class Workload:
    """How to build the requests for one model."""

    model: str
    #: One line for logs and the report: ``FP32 INPUT__0 [1..4, 64]``.
    description: str
    #: One request's inputs; None for a workload of fixed ``requests``.
    make_inputs: MakeInputs | None = None
    #: Rows per request; None: 1..4 at random (the examples' default).
    batch_size: int | None = None
    #: Input name -> v2 datatype, where an array's dtype does not say it.
    datatypes: Mapping[str, str] = field(default_factory=dict)
    #: ``example`` (hand-made), ``random`` (from the metadata) or ``data`` (a file).
    source: str = "example"
    #: The requests of an ``--input-data`` file, each sent as given.
    requests: tuple[Mapping[str, np.ndarray], ...] | None = None
    #: The inputs a hand-made workload was written for (checked against the server's).
    expects: tuple[TensorSpec, ...] | None = None

    def with_batch_size(self, batch_size: int) -> Workload:
        """This example workload with ``batch_size`` rows in every request."""
        description = self.description.replace("[1..4", f"[{batch_size}")
        return dataclasses.replace(self, batch_size=batch_size, description=description)

    def build_pool(self, seed: int = 0, size: int = POOL_SIZE) -> list[pb.ModelInferRequest]:
        """The requests to send (ids are set when sent).

        A file's requests are all used, once each; generated ones are ``size``
        random requests, fewer when they would pass :data:`POOL_BYTES`.
        Raises :class:`InputSpecError` for a request over :data:`MAX_REQUEST_BYTES`.
        """
        if self.requests is not None:
            return [self._checked(inputs) for inputs in self.requests]
        assert self.make_inputs is not None
        rng = np.random.default_rng(seed)
        pool: list[pb.ModelInferRequest] = []
        total = 0
        while len(pool) < size and total < POOL_BYTES:
            batch = self.batch_size if self.batch_size is not None else _batch(rng)
            request = self._checked(self.make_inputs(rng, batch))
            pool.append(request)
            total += request.ByteSize()
        return pool

    def _checked(self, inputs: Mapping[str, np.ndarray]) -> pb.ModelInferRequest:
        request = encode_request(self.model, inputs, self.datatypes)
        size = request.ByteSize()
        if size > MAX_REQUEST_BYTES:
            shapes = ", ".join(f"{n} {shape_text(a.shape)}" for n, a in inputs.items())
            raise InputSpecError(
                f"one request to model '{self.model}' ({shapes}) is {size / 2**20:.1f} MiB, "
                f"over the {MAX_REQUEST_BYTES // 2**20} MiB the load generator sends; "
                "use smaller shapes or --batch-size"
            )
        return request


def _batch(rng: np.random.Generator, low: int = 1, high: int = 4) -> int:
    return int(rng.integers(low, high + 1))


def _dense(features: tuple[int, ...]) -> MakeInputs:
    def make(rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
        return {"INPUT__0": rng.standard_normal((batch, *features), dtype=np.float32)}

    return make


def _text(rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
    # One length per request (a padded batch); lengths vary between requests.
    length = int(rng.integers(4, 65))
    return {"TOKENS": rng.integers(1, 1000, size=(batch, length), dtype=np.int64)}


def _dense_inputs(*features: int) -> tuple[TensorSpec, ...]:
    return (TensorSpec("INPUT__0", "FP32", features),)


WORKLOADS: dict[str, Workload] = {
    "mlp": Workload("mlp", "FP32 INPUT__0 [1..4, 64]", _dense((64,)), expects=_dense_inputs(64)),
    "cnn": Workload(
        "cnn",
        "FP32 INPUT__0 [1..4, 3, 64, 64]",
        _dense((3, 64, 64)),
        expects=_dense_inputs(3, 64, 64),
    ),
    "text": Workload(
        "text",
        "INT64 TOKENS [1..4, 4..64], ids 1..999",
        _text,
        expects=(TensorSpec("TOKENS", "INT64", (-1,)),),
    ),
    "null": Workload(
        "null", "FP32 INPUT__0 [1..4, 64], no compute", _dense((64,)), expects=_dense_inputs(64)
    ),
}

DEFAULT_MODELS = ("mlp", "text")


# Model selection -----------------------------------------------------------------


def parse_models(value: str | Iterable[str] | None) -> list[str]:
    """``"mlp, text"`` -> ``["mlp", "text"]``; ValueError for a bad list.

    Empty or None gives :data:`DEFAULT_MODELS`. A model may carry a weight:
    ``"mlp:3,text:1"`` (see :func:`parse_weighted_models`).
    """
    return list(parse_weighted_models(value))


def parse_weighted_models(value: str | Iterable[str] | None) -> dict[str, int]:
    """``"mlp:3,scaler"`` -> ``{"mlp": 3, "scaler": 1}`` (task weights, in order).

    Any model name is accepted here; whether the server serves it is checked
    against the server (:func:`resolve_workloads`).
    """
    items = value.split(",") if isinstance(value, str) else list(value or ())
    items = [item.strip() for item in items if item and item.strip()]
    if not items:
        items = list(DEFAULT_MODELS)
    weights: dict[str, int] = {}
    for item in items:
        name, _, weight_text = item.partition(":")
        name = name.strip()
        if not name:
            raise ValueError(f"no model name in {item!r}; expected NAME or NAME:WEIGHT")
        weight = 1
        if weight_text:
            try:
                weight = int(weight_text)
            except ValueError:
                weight = 0
            if weight < 1:
                raise ValueError(
                    f"weight of model '{name}' must be a positive integer, got {weight_text!r}"
                )
        if name in weights:
            raise ValueError(f"model '{name}' is listed twice")
        weights[name] = weight
    return weights


# From the server's metadata to a workload ----------------------------------------------


@dataclass(frozen=True)
class WorkloadOptions:
    """What the command line says about the requests (perf_analyzer's options)."""

    #: ``--shape``: input name -> dims without the batch dimension.
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    #: ``--batch-size``; None: 1 (the examples: 1..4 at random).
    batch_size: int | None = None
    #: ``--input-data``: model name -> file; the key None: the run's only model.
    input_data: Mapping[str | None, InputData] = field(default_factory=dict)


def parse_input_data_options(values: Iterable[str] | None) -> dict[str | None, InputData]:
    """``--input-data [MODEL=]FILE`` values, each file read and checked for its format.

    A value that names an existing file is a file even if it holds ``=``.
    """
    files: dict[str | None, InputData] = {}
    for value in values or ():
        model: str | None = None
        path = value
        if "=" in value and not Path(value).exists():
            model, _, path = value.partition("=")
            model = model.strip()
            if not model:
                raise InputSpecError(f"--input-data {value!r}: no model name before '='")
        if model in files:
            which = f"model '{model}'" if model else "the run's model"
            raise InputSpecError(f"--input-data is given twice for {which}")
        files[model] = load_input_data(path)
    return files


def example_matches(example: Workload, served: ModelInputs) -> bool:
    """True when ``served`` has the inputs the hand-made ``example`` workload sends."""
    return example.expects is not None and served.batched and served.inputs == example.expects


def workload_for(served: ModelInputs, options: WorkloadOptions | None = None) -> Workload:
    """The workload for a served model (see the module docstring for which one)."""
    options = options or WorkloadOptions()
    model = served.model
    data = options.input_data.get(model, options.input_data.get(None))
    shapes = {name: dims for name, dims in options.shapes.items() if served.get(name)}
    example = WORKLOADS.get(model)
    if data is None and not shapes and example is not None and example_matches(example, served):
        if options.batch_size is None:
            return example
        return example.with_batch_size(check_batch_size(served, options.batch_size))
    datatypes = {tensor.name: tensor.datatype for tensor in served.inputs}
    if data is not None:
        requests = data.requests(served, shapes, options.batch_size)
        return Workload(
            model,
            f"{len(requests)} request(s) from {data.path.name}",
            datatypes=datatypes,
            source="data",
            requests=tuple(requests),
        )
    full_shapes = request_shapes(served, shapes, options.batch_size)
    batch = check_batch_size(served, options.batch_size)

    def make(rng: np.random.Generator, _: int) -> dict[str, np.ndarray]:
        return {
            name: random_tensor(datatypes[name], shape, rng) for name, shape in full_shapes.items()
        }

    described = ", ".join(
        f"{datatypes[name]} {name} {shape_text(shape)}" for name, shape in full_shapes.items()
    )
    return Workload(
        model,
        f"{described or 'no inputs'}, random",
        make,
        batch_size=batch,
        datatypes=datatypes,
        source="random",
    )


def fetch_model_inputs(client: Any, model: str) -> ModelInputs:
    """A served model's inputs from its metadata and config (``client``: an InferenceClient).

    Raises :class:`ModelNotServedError` when the server does not know the
    model, :class:`ServerQueryError` when it is not ready or does not answer.
    """
    import grpc

    from batchwire.clients import InferenceServerError

    try:
        metadata = client.model_metadata(model)
    except InferenceServerError as exc:
        raise _not_served(client, model, exc) from None
    try:
        config = client.model_config(model)
    except InferenceServerError as exc:
        if exc.status_code != grpc.StatusCode.UNIMPLEMENTED:
            raise ServerQueryError(
                f"ModelConfig of model '{model}' at {client.address} failed: {exc}"
            ) from None
        config = None  # a KServe-only server: the metadata shapes are all we have
    return ModelInputs.from_protos(metadata, config)


def _not_served(client: Any, model: str, error: Exception) -> Exception:
    from batchwire.clients import InferenceServerError

    try:
        index = client.repository_index()
    except InferenceServerError:
        return ServerQueryError(
            f"ModelMetadata of model '{model}' at {client.address} failed: {error}"
        )
    for entry in index:
        if entry.name == model:
            reason = f": {entry.reason}" if entry.reason else ""
            return ServerQueryError(
                f"model '{model}' at {client.address} is not ready ({entry.state or 'unknown'}"
                f"{reason})"
            )
    served = sorted({entry.name for entry in index})
    return ModelNotServedError(
        f"model '{model}' is not served at {client.address}; served: {', '.join(served) or 'none'}"
    )


def resolve_workloads(
    target: str,
    models: Sequence[str],
    options: WorkloadOptions | None = None,
    timeout: float = 30.0,
) -> dict[str, Workload]:
    """Each model's workload, from the metadata of the server at ``target``.

    No ``models``: every model the server has ready. Raises
    :class:`InputSpecError` (a bad option or file, a model that is not
    served) or :class:`ServerQueryError`.
    """
    from batchwire.clients import InferenceClient, InferenceServerError

    options = options or WorkloadOptions()
    with InferenceClient(target, timeout=timeout) as client:
        if not models:
            try:
                index = client.repository_index(ready=True)
            except InferenceServerError as exc:
                raise ServerQueryError(f"RepositoryIndex at {target} failed: {exc}") from None
            models = sorted({entry.name for entry in index})
            if not models:
                raise ServerQueryError(f"no model is ready at {target}")
        check_input_data_models(options, models)
        served = {model: fetch_model_inputs(client, model) for model in models}
    for name in options.shapes:
        if not any(inputs.get(name) for inputs in served.values()):
            having = "; ".join(f"'{m}': {inputs.names()}" for m, inputs in served.items())
            raise InputSpecError(
                f"--shape {name}: no model of this run has an input '{name}' (inputs of {having})"
            )
    return {model: workload_for(inputs, options) for model, inputs in served.items()}


def check_input_data_models(options: WorkloadOptions, models: Sequence[str]) -> None:
    """InputSpecError when an ``--input-data`` file names no model of ``models``."""
    for model, data in options.input_data.items():
        if model is None and len(models) > 1:
            raise InputSpecError(
                f"--input-data {data.path} names no model but the run loads {len(models)} "
                f"({', '.join(models)}); write --input-data MODEL={data.path}"
            )
        if model is not None and model not in models:
            raise InputSpecError(
                f"--input-data {model}={data.path}: model '{model}' is not part of this run "
                f"(models: {', '.join(models)})"
            )


# Pools on disk, for the Locust processes --------------------------------------------

_LENGTH = struct.Struct("<I")


def write_workloads(
    folder: Path, workloads: Mapping[str, Workload], pools: Mapping[str, list[pb.ModelInferRequest]]
) -> Path:
    """Write each pool to ``folder/requests/<n>.bin`` and the index ``folder/workloads.json``."""
    requests_dir = folder / "requests"
    requests_dir.mkdir(parents=True, exist_ok=True)
    for stale in requests_dir.glob("*.bin"):
        stale.unlink()
    index: dict[str, Any] = {"version": WORKLOADS_FORMAT, "models": {}}
    for number, (model, workload) in enumerate(workloads.items()):
        relative = f"requests/{number}.bin"
        with (folder / relative).open("wb") as handle:
            for request in pools[model]:
                data = request.SerializeToString()
                handle.write(_LENGTH.pack(len(data)))
                handle.write(data)
        index["models"][model] = {
            "description": workload.description,
            "source": workload.source,
            "requests": relative,
            "count": len(pools[model]),
        }
    path = folder / WORKLOADS_FILE
    path.write_text(json.dumps(index, indent=2))
    return path


def read_workloads(path: str | Path) -> dict[str, list[pb.ModelInferRequest]]:
    """The pools :func:`write_workloads` wrote, by model; ValueError naming what is wrong."""
    path = Path(path)
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the workloads file {path}: {exc}") from None
    if not isinstance(index, dict) or index.get("version") != WORKLOADS_FORMAT:
        raise ValueError(
            f"{path}: not a workloads file of format {WORKLOADS_FORMAT} "
            "(written by batchwire loadtest)"
        )
    pools: dict[str, list[pb.ModelInferRequest]] = {}
    for model, entry in index.get("models", {}).items():
        pool_path = path.parent / entry["requests"]
        pool: list[pb.ModelInferRequest] = []
        try:
            data = pool_path.read_bytes()
            offset = 0
            while offset < len(data):
                (length,) = _LENGTH.unpack_from(data, offset)
                offset += _LENGTH.size
                if offset + length > len(data):
                    raise ValueError(f"truncated after {len(pool)} requests")
                pool.append(pb.ModelInferRequest.FromString(data[offset : offset + length]))
                offset += length
        except (OSError, ValueError, struct.error, DecodeError) as exc:
            raise ValueError(
                f"{path}: cannot read the requests of model '{model}' ({pool_path}): {exc}"
            ) from None
        if len(pool) != entry.get("count") or not pool:
            raise ValueError(
                f"{pool_path}: expected {entry.get('count')} requests of model '{model}', "
                f"read {len(pool)}"
            )
        pools[model] = pool
    return pools


# Sending ----------------------------------------------------------------------------

_ids = itertools.count(1)


def next_request_id(prefix: str) -> str:
    """A process-unique request id (``<prefix>-<n>``)."""
    return f"{prefix}-{next(_ids)}"


def pick(pool: list[pb.ModelInferRequest], request_id: str) -> pb.ModelInferRequest:
    """A random pooled request with ``id`` set (a shallow copy; the pool is untouched)."""
    template = random.choice(pool)
    request = pb.ModelInferRequest()
    request.CopyFrom(template)
    request.id = request_id
    return request
