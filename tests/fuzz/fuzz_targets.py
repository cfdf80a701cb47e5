"""One-input fuzz targets: arbitrary bytes in, a documented outcome or a failure out.

Both targets are plain functions of ``bytes``, so that the coverage-guided runner
(``atheris_targets.py``) and the hypothesis tests drive the very same code. A target
returns when the code under test gave one of its documented outcomes; otherwise it
raises: an AssertionError for a wrong outcome, or the unexpected exception itself.

``decode``: the bytes are parsed as a ``ModelInferRequest`` (bytes that are not one
end there, with protobuf's DecodeError, as the gRPC server would refuse them), then
decoded by :data:`~batchwire.server.codec.GRPC_CODEC` and checked by
:func:`~batchwire.core.validation.validate_request` against each of :data:`SPECS`.
Documented outcomes: a request holding what the message declared, or an
InferenceError with INVALID_ARGUMENT or UNIMPLEMENTED whose message starts with
``model '<name>'``. Anything else, INTERNAL included, is a failure.

``config``: the bytes become ``config.pbtxt`` of each model folder of a small
repository (:class:`ConfigRepository`) and are read the way the server reads them,
by :meth:`ModelRepository.discover_model` (parse, Triton's defaults, validation,
version selection, conversion to ModelSpec; no weights are loaded). Documented
outcomes: an entry whose versions carry ModelSpecs, or an entry carrying the
message of a ModelLoadError that starts with a path inside the model's folder
(``<file>: <field>: <problem>``). Any other exception escapes discover_model and
is a failure.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from batchwire.core.datatypes import NUMPY_DTYPES
from batchwire.core.errors import InferenceError, StatusCode
from batchwire.core.spec import ModelSpec, TensorSpec
from batchwire.core.validation import validate_request
from batchwire.protos import grpc_service_pb2 as pb
from batchwire.server.codec import GRPC_CODEC, MAX_ID_LENGTH
from batchwire.server.repository import ModelRepository

#: The v2 datatypes, each an optional input IN_<type> and an output OUT_<type> of ECHO.
DATATYPES = tuple(NUMPY_DTYPES)

#: Batching, every datatype, dims [-1], every input optional (the echo model's shape).
ECHO = ModelSpec(
    "echo",
    "1",
    "python",
    8,
    tuple(TensorSpec(f"IN_{dt}", dt, (-1,), optional=True) for dt in DATATYPES),
    tuple(TensorSpec(f"OUT_{dt}", dt, (-1,)) for dt in DATATYPES),
)
#: Not batching, fixed dims, one required input, a 64-byte input limit.
FLAT = ModelSpec(
    "flat",
    "1",
    "pytorch_libtorch",
    0,
    (
        TensorSpec("IN_FP32", "FP32", (2, 2)),
        TensorSpec("IN_INT64", "INT64", (-1,), optional=True),
    ),
    (TensorSpec("OUT_FP32", "FP32", (2, 2)),),
    max_input_bytes=64,
)
#: Batching, a ragged input with a reshape, a required BYTES input.
RAGGED = ModelSpec(
    "ragged",
    "1",
    "python",
    4,
    (
        TensorSpec("IN_INT32", "INT32", (-1, 2), allow_ragged_batch=True),
        TensorSpec("IN_BYTES", "BYTES", (1,), reshape=()),
    ),
    (TensorSpec("OUT_INT32", "INT32", (-1, 2)),),
)
SPECS = (ECHO, FLAT, RAGGED)

#: What a message may be refused with (see the module docstring).
REFUSALS = (StatusCode.INVALID_ARGUMENT, StatusCode.UNIMPLEMENTED)


def check_decode(message: pb.ModelInferRequest, spec: ModelSpec) -> bool:
    """Decode and validate ``message`` for ``spec``; True when it was accepted.

    Raises AssertionError when the outcome is not a documented one.
    """
    try:
        request, datatypes = GRPC_CODEC.decode(message, spec, None)
        validate_request(spec, request, datatypes)
    except InferenceError as exc:
        assert exc.code in REFUSALS, f"{exc.code}: {exc.message}"
        assert exc.message.startswith(f"model '{spec.name}'"), exc.message
        return False
    assert len(request.id) <= MAX_ID_LENGTH
    assert set(request.inputs) == {tensor.name for tensor in message.inputs}
    for tensor in message.inputs:
        assert request.inputs[tensor.name].shape == tuple(tensor.shape), tensor.name
        assert datatypes[tensor.name] == tensor.datatype
    assert request.requested_outputs == tuple(out.name for out in message.outputs)
    assert request.priority >= 0
    assert request.timeout_us is None or request.timeout_us >= 0
    return True


def decode(data: bytes) -> None:
    """The ``decode`` target (see the module docstring)."""
    try:
        message = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return
    for spec in SPECS:
        check_decode(message, spec)


#: The repository's model folders -> the files of each of their version folders.
#: "multi" holds every format, so a config that names its platform or backend gets
#: past format inference; "pt" holds one TorchScript file, so one that names none does.
MODEL_FOLDERS: dict[str, dict[str, tuple[str, ...]]] = {
    "multi": {
        "1": ("model.pt", "model.pt2", "model.py"),
        "2": ("model.pt", "model.pt2", "model.py"),
    },
    "pt": {"1": ("model.pt",)},
}


@dataclass(frozen=True)
class KnownFailure:
    """A reported bug the targets pass over, so that fuzzing looks for new ones.

    Matched by the exception's type and the function (and file) that raised it; each
    has a ``xfail(strict=True)`` test that shows it, so that fixing the bug turns that
    test into an XPASS failure, and this entry is then removed.
    """

    exception: type[BaseException]
    function: str
    filename: str
    reason: str

    def matches(self, exc: BaseException) -> bool:
        # The innermost frame may be a comprehension inside ``function``.
        frames = [
            f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(self.filename)
        ]
        return type(exc) is self.exception and any(f.name == self.function for f in frames)


KNOWN_FAILURES: tuple[KnownFailure, ...] = ()


def known_failure(exc: BaseException) -> KnownFailure | None:
    """The entry of :data:`KNOWN_FAILURES` that ``exc`` is, if any."""
    return next((known for known in KNOWN_FAILURES if known.matches(exc)), None)


class ConfigRepository:
    """A model repository on disk whose configs the ``config`` target rewrites.

    ``root``: an empty folder to build it in; None makes a temporary one, removed by
    :meth:`close`.
    """

    def __init__(self, root: Path | None = None) -> None:
        self._owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="fuzz-repo-")) if root is None else root
        for model, versions in MODEL_FOLDERS.items():
            for version, files in versions.items():
                folder = self.root / model / version
                folder.mkdir(parents=True, exist_ok=True)
                for name in files:
                    (folder / name).write_bytes(b"")
        self.repository = ModelRepository(self.root)

    def check(self, text: bytes) -> int:
        """Read ``text`` as every model's config.pbtxt; how many models loaded.

        Raises AssertionError when an outcome is not a documented one; an exception
        other than the repository's errors escapes discover_model on its own.
        """
        loaded = 0
        for model in MODEL_FOLDERS:
            folder = self.root / model
            (folder / "config.pbtxt").write_bytes(text)
            try:
                entry = self.repository.discover_model(model)
            except Exception as exc:
                if known_failure(exc) is None:
                    raise
                continue
            if entry.ok:
                assert entry.versions, "a model without versions loaded"
                for source in entry.versions:
                    assert isinstance(source.spec, ModelSpec)
                    assert source.spec.name == model
                    assert source.spec.inputs and source.spec.outputs
                loaded += 1
            else:
                # "<file>: <field>: <problem>", the file inside the model's folder.
                assert entry.error and entry.error.startswith(str(folder)), entry.error
                _, _, problem = entry.error.partition(": ")
                assert problem.strip(), entry.error
        return loaded

    def close(self) -> None:
        """Remove the repository when this object created it."""
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)


#: Valid configs to start the config target from (a fuzzer mutates these).
SEED_CONFIGS = (
    """platform: "pytorch_libtorch"
max_batch_size: 8
input { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 4 ] }
output { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 2 ] }
""",
    """backend: "python"
max_batch_size: 4
input [ { name: "ids" data_type: TYPE_INT64 dims: [ -1 ] allow_ragged_batch: true },
        { name: "text" data_type: TYPE_STRING dims: [ 1 ] optional: true } ]
output [ { name: "scores" data_type: TYPE_FP16 dims: [ -1, 2 ] reshape: { shape: [ -1, 1, 2 ] } } ]
dynamic_batching {
  preferred_batch_size: [ 2, 4 ]
  max_queue_delay_microseconds: 100
  priority_levels: 2
  default_priority_level: 1
  default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 10 max_queue_size: 3 }
  priority_queue_policy { key: 2 value { timeout_action: REJECT allow_timeout_override: true } }
}
instance_group [ { count: 2 kind: KIND_CPU }, { kind: KIND_GPU gpus: [ 0 ] } ]
version_policy { all { } }
parameters { key: "batchwire.ragged_pad_value" value { string_value: "0" } }
parameters { key: "batchwire.max_input_bytes" value { string_value: "1024" } }
model_warmup {
  name: "w" batch_size: 2 count: 1
  inputs { key: "ids" value { data_type: TYPE_INT64 dims: [ 3 ] zero_data: true } }
}
""",
    """platform: "torch_export"
max_batch_size: 0
input { name: "x" data_type: TYPE_BF16 dims: [ 2, 2 ] }
output { name: "y" data_type: TYPE_BOOL dims: [ 1 ] reshape: { shape: [ ] } }
version_policy { specific { versions: [ 1 ] } }
parameters { key: "batchwire.inline_below_us" value { string_value: "0" } }
""",
)


def config_dictionary() -> list[str]:
    """libFuzzer dictionary entries for config.pbtxt: every field and enum value name of
    ModelConfig (the fuzzer cannot guess ``dynamic_batching`` byte by byte), the text
    format's punctuation and the ``batchwire.*`` parameter keys."""
    from batchwire.protos import model_config_pb2 as mc
    from batchwire.server.repository.params import KNOWN_KEYS

    words: set[str] = {"{", "}", "[", "]", ":", ",", '"', "true", "false", "-1"}
    words.update(KNOWN_KEYS)
    seen: set[str] = set()
    pending = [mc.ModelConfig.DESCRIPTOR]
    while pending:
        descriptor = pending.pop()
        if descriptor.full_name in seen:
            continue
        seen.add(descriptor.full_name)
        for field in descriptor.fields:
            words.add(field.name)
            if field.message_type is not None:
                pending.append(field.message_type)
            if field.enum_type is not None:
                words.update(value.name for value in field.enum_type.values)
    return sorted(words)


def write_dictionary(path: Path) -> Path:
    """:func:`config_dictionary` in libFuzzer's ``-dict=`` file format (quoted, escaped)."""
    escaped = (word.replace("\\", "\\\\").replace('"', '\\"') for word in config_dictionary())
    path.write_text("".join(f'"{word}"\n' for word in escaped))
    return path


def decode_seeds(count: int = 200) -> list[bytes]:
    """``count`` serialized requests drawn (derandomized: the same every time) by the
    request strategy of tests/server/hostile_requests.py, to start the decode target from."""
    tests = Path(__file__).resolve().parents[1]
    for folder in (tests, tests / "server"):  # hostile_requests imports testsupport
        if str(folder) not in sys.path:
            sys.path.append(str(folder))
    from hostile_requests import infer_requests
    from hypothesis import HealthCheck, given, settings

    seeds: list[bytes] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(message=infer_requests())
    def collect(message: pb.ModelInferRequest) -> None:
        seeds.append(message.SerializeToString())

    collect()
    return seeds


def write_corpus(folder: Path) -> dict[str, Path]:
    """Seed corpora for both targets under ``folder`` (``decode/``, ``config/``), plus
    ``config.dict``; returns target -> corpus folder."""
    corpora = {name: folder / name for name in ("decode", "config")}
    seeds = {"decode": decode_seeds(), "config": [text.encode() for text in SEED_CONFIGS]}
    for name, corpus in corpora.items():
        corpus.mkdir(parents=True, exist_ok=True)
        for index, seed in enumerate(seeds[name]):
            (corpus / f"seed-{index:04d}").write_bytes(seed)
    write_dictionary(folder / "config.dict")
    return corpora


_repository: ConfigRepository | None = None


def config(data: bytes) -> None:
    """The ``config`` target (see the module docstring); one repository per process."""
    global _repository
    if _repository is None:
        _repository = ConfigRepository()
        atexit.register(_repository.close)
    _repository.check(data)


TARGETS = {"decode": decode, "config": config}
