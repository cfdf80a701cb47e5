"""Request inputs for any served model, the way Triton's perf_analyzer builds them.

A model's inputs come from its ``ModelMetadata`` (names, v2 datatypes, shapes)
and ``ModelConfig`` (``max_batch_size``, optional and shape-tensor inputs):
:meth:`ModelInputs.from_protos`. From them this module builds one request's
tensors, either random (:func:`random_tensor`, shapes from
:func:`request_shapes`) or from a file given with ``--input-data``
(:func:`load_input_data`, then :meth:`InputData.requests`): an ``.npz``
archive, or perf_analyzer's JSON format.

Conventions, as in perf_analyzer: shapes given with ``--shape NAME:d1,d2,...``
and in JSON input data leave out the batch dimension; a batching model
(``max_batch_size > 0``) gets ``--batch-size`` rows (default 1) in front.
Every problem raises :class:`InputSpecError` with a one-line message that
names the model, the input, what was expected and what was found.

Only numpy and :mod:`batchwire.core.datatypes` are imported at module level
(no torch, no protobuf, no server); BF16 values read from a file are rounded
by :func:`batchwire.clients.tensors.float_to_bf16`, imported when needed.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import string
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batchwire.core.datatypes import NUMPY_DTYPES, WIRE_DTYPES, deserialize_bytes

__all__ = [
    "BYTES_LENGTH",
    "INT_RANGE",
    "InputData",
    "InputSpecError",
    "ModelInputs",
    "TensorSpec",
    "check_batch_size",
    "load_input_data",
    "parse_shape",
    "parse_shapes",
    "random_tensor",
    "request_shapes",
    "resolve_shape",
    "shape_text",
]

#: Random integers are drawn from [low, high): small non-negative values are valid
#: indices and token ids for any table of 100 rows or more, and never overflow when
#: a model adds or multiplies them. (perf_analyzer fills every byte at random, which
#: gives integers over the whole range and floats that may be NaN or infinite.)
INT_RANGE = (0, 100)
#: Characters in each random BYTES element (perf_analyzer's --string-length default).
BYTES_LENGTH = 128
_BYTES_ALPHABET = np.frombuffer((string.ascii_letters + string.digits).encode(), dtype=np.uint8)


class InputSpecError(ValueError):
    """The inputs of a model cannot be built as asked; ``str()`` is one line."""


def shape_text(shape: Iterable[int]) -> str:
    """``[3, -1, -1]``: a shape as the messages print it."""
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


@dataclass(frozen=True)
class TensorSpec:
    """One input tensor of a model, as its metadata and config describe it."""

    name: str
    #: KServe v2 datatype name (``FP32``, ``BYTES`` ...).
    datatype: str
    #: Dims without the batch dimension; -1 where any size is accepted.
    dims: tuple[int, ...]
    optional: bool = False
    shape_tensor: bool = False

    @property
    def variable(self) -> bool:
        """True when some dim is -1 (any size)."""
        return any(dim < 0 for dim in self.dims)

    def describe(self) -> str:
        """``FP32 INPUT__0 [3, -1, -1]``."""
        return f"{self.datatype} {self.name} {shape_text(self.dims)}"


@dataclass(frozen=True)
class ModelInputs:
    """The input tensors of one model and whether it batches."""

    model: str
    #: 0: the model does not batch; requests carry exactly ``dims``.
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]

    @property
    def batched(self) -> bool:
        """True when requests carry a leading batch dimension."""
        return self.max_batch_size > 0

    def get(self, name: str) -> TensorSpec | None:
        """The input called ``name``, if the model has one."""
        return next((tensor for tensor in self.inputs if tensor.name == name), None)

    def names(self) -> str:
        """``X, Y``: the input names, for messages."""
        return ", ".join(tensor.name for tensor in self.inputs) or "none"

    @classmethod
    def from_protos(cls, metadata: Any, config: Any | None = None) -> ModelInputs:
        """Inputs from a ``ModelMetadataResponse`` and, if known, a ``ModelConfig``.

        The metadata gives each input's datatype and full request shape (with a
        leading -1 when the model batches); the config says whether it batches
        (``max_batch_size``) and which inputs are optional or shape tensors.
        Without a config the metadata shapes are taken as they are, unbatched.
        """
        name = metadata.name or (config.name if config is not None else "")
        max_batch = int(config.max_batch_size) if config is not None else 0
        flags = {}
        if config is not None:
            flags = {item.name: (item.optional, item.is_shape_tensor) for item in config.input}
        tensors = []
        for item in metadata.inputs:
            shape = tuple(int(dim) for dim in item.shape)
            if max_batch > 0:
                if not shape:
                    raise InputSpecError(
                        f"model '{name}' input '{item.name}': the metadata shape is [] but the "
                        f"model batches (max_batch_size {max_batch}); expected [-1, ...]"
                    )
                shape = shape[1:]
            datatype = item.datatype
            if datatype not in NUMPY_DTYPES:
                raise InputSpecError(
                    f"model '{name}' input '{item.name}' has datatype {datatype!r}, which is not "
                    f"a KServe v2 datatype ({', '.join(NUMPY_DTYPES)})"
                )
            optional, shape_tensor = flags.get(item.name, (False, False))
            tensors.append(TensorSpec(item.name, datatype, shape, optional, shape_tensor))
        return cls(name, max_batch, tuple(tensors))

    def describe(self) -> str:
        """``batches up to 8: FP32 X [4]`` / ``no batching: INT32 IDS [-1]``."""
        batching = f"batches up to {self.max_batch_size}" if self.batched else "no batching"
        return f"{batching}; inputs " + ", ".join(t.describe() for t in self.inputs)


# Shapes ---------------------------------------------------------------------------


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``"IMAGE:3,224,224"`` -> ``("IMAGE", (3, 224, 224))`` (perf_analyzer's ``--shape``).

    The name is everything before the last colon, so names with colons work.
    ``"NAME:"`` is a scalar (no dims).
    """
    name, colon, dims_text = str(text).strip().rpartition(":")
    if not colon or not name:
        raise InputSpecError(
            f"--shape {text!r}: expected NAME:d1,d2,... (the dims without the batch "
            "dimension, e.g. IMAGE:3,224,224)"
        )
    dims: list[int] = []
    for part in dims_text.split(",") if dims_text.strip() else []:
        try:
            dim = int(part.strip())
        except ValueError:
            dim = -1
        if dim < 0:
            raise InputSpecError(
                f"--shape {text!r}: dims must be whole numbers >= 0, got {part.strip()!r}"
            )
        dims.append(dim)
    return name, tuple(dims)


def parse_shapes(values: Iterable[str] | None) -> dict[str, tuple[int, ...]]:
    """Every ``--shape`` value by input name; an input named twice is an error."""
    shapes: dict[str, tuple[int, ...]] = {}
    for value in values or ():
        name, dims = parse_shape(value)
        if name in shapes:
            raise InputSpecError(
                f"--shape {name} is given twice ({shape_text(shapes[name])} and {shape_text(dims)})"
            )
        shapes[name] = dims
    return shapes


def _fits(dims: Sequence[int], shape: Sequence[int]) -> bool:
    return len(dims) == len(shape) and all(
        d < 0 or d == s for d, s in zip(dims, shape, strict=True)
    )


def resolve_shape(
    model: ModelInputs, tensor: TensorSpec, override: tuple[int, ...] | None
) -> tuple[int, ...]:
    """The dims (batch excluded) to send for ``tensor``: its config dims, or ``override``.

    A variable (-1) dim needs an override (``--shape``); an override must have
    the input's rank and keep its fixed dims.
    """
    where = f"model '{model.model}' input '{tensor.name}'"
    if override is None:
        if tensor.variable:
            example = ",".join(str(d) if d >= 0 else "N" for d in tensor.dims)
            raise InputSpecError(
                f"{where} has variable dims {shape_text(tensor.dims)}: give its shape with "
                f"--shape {tensor.name}:{example} (N: the size to send)"
            )
        return tensor.dims
    given = f"--shape {tensor.name}:{','.join(map(str, override))}"
    if len(override) != len(tensor.dims):
        hint = ""
        if model.batched and len(override) == len(tensor.dims) + 1:
            hint = (
                f"; leave out the batch dimension (the model batches up to "
                f"{model.max_batch_size}: use --batch-size)"
            )
        raise InputSpecError(
            f"{given} has {len(override)} dims, {where} has dims {shape_text(tensor.dims)} "
            f"({len(tensor.dims)}){hint}"
        )
    for index, (dim, size) in enumerate(zip(tensor.dims, override, strict=True)):
        if dim >= 0 and dim != size:
            raise InputSpecError(
                f"{given} does not fit {where}, dims {shape_text(tensor.dims)}: "
                f"dim {index} is fixed at {dim}, got {size}"
            )
    return override


def check_batch_size(model: ModelInputs, batch_size: int | None) -> int:
    """The batch size to send (default 1); an error when the model cannot take it."""
    if batch_size is None:
        return 1
    if batch_size < 1:
        raise InputSpecError(f"--batch-size must be >= 1, got {batch_size}")
    if not model.batched and batch_size != 1:
        raise InputSpecError(
            f"model '{model.model}' does not batch (max_batch_size 0): "
            f"--batch-size must be 1, got {batch_size}"
        )
    if model.batched and batch_size > model.max_batch_size:
        raise InputSpecError(
            f"--batch-size {batch_size} is over model '{model.model}''s max_batch_size "
            f"{model.max_batch_size}"
        )
    return batch_size


def request_shapes(
    model: ModelInputs,
    overrides: Mapping[str, tuple[int, ...]] | None = None,
    batch_size: int | None = None,
) -> dict[str, tuple[int, ...]]:
    """The full shape of every input in one request (batch dimension first if batched)."""
    overrides = overrides or {}
    batch = check_batch_size(model, batch_size)
    shapes: dict[str, tuple[int, ...]] = {}
    for tensor in model.inputs:
        if tensor.shape_tensor:
            raise InputSpecError(
                f"model '{model.model}' input '{tensor.name}' is a shape tensor: its values "
                "must be real sizes, not random numbers; give them with --input-data"
            )
        dims = resolve_shape(model, tensor, overrides.get(tensor.name))
        shapes[tensor.name] = (batch, *dims) if model.batched else dims
    return shapes


# Random data ----------------------------------------------------------------------


def random_tensor(datatype: str, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A random array of ``datatype`` in its storage dtype (BF16: uint16 bit patterns).

    Floats are standard normal, BOOL is fair coin flips, integers are uniform
    in :data:`INT_RANGE`, BYTES elements are :data:`BYTES_LENGTH` random
    letters and digits.
    """
    shape = tuple(int(d) for d in shape)
    if datatype not in NUMPY_DTYPES:
        raise InputSpecError(
            f"unknown datatype {datatype!r}; expected one of {', '.join(NUMPY_DTYPES)}"
        )
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape, dtype=np.uint8).astype(np.bool_)
    if datatype in ("FP16", "FP32", "FP64"):
        return rng.standard_normal(shape, dtype=np.float32).astype(NUMPY_DTYPES[datatype])
    if datatype == "BF16":
        floats = rng.standard_normal(shape, dtype=np.float32)
        # The upper half of a float32 is its bfloat16 (truncated: fine for random data).
        return (floats.view(np.uint32) >> 16).astype(np.uint16)
    if datatype == "BYTES":
        count = math.prod(shape)
        letters = rng.choice(_BYTES_ALPHABET, size=(count, BYTES_LENGTH))
        array = np.empty(count, dtype=np.object_)
        array[:] = [row.tobytes() for row in letters]
        return array.reshape(shape)
    low, high = INT_RANGE
    return rng.integers(low, high, size=shape, dtype=NUMPY_DTYPES[datatype])


# --input-data files -----------------------------------------------------------------


@dataclass
class InputData:
    """A parsed ``--input-data`` file, not yet checked against a model.

    ``arrays`` (``.npz``): one array per input, the request's tensor as sent
    (with the batch dimension when the model batches). ``entries`` (``.json``,
    perf_analyzer's format): per request, each input's value, batch excluded.
    """

    path: Path
    arrays: dict[str, np.ndarray] | None = None
    entries: list[dict[str, Any]] | None = None

    @property
    def kind(self) -> str:
        """``npz`` or ``json``."""
        return "npz" if self.arrays is not None else "json"

    def requests(
        self,
        model: ModelInputs,
        overrides: Mapping[str, tuple[int, ...]] | None = None,
        batch_size: int | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """The requests this file gives for ``model``, each input in its storage dtype.

        Raises :class:`InputSpecError` naming the input, expected against got,
        for a missing or unknown input, a wrong dtype or a wrong shape.
        """
        if self.arrays is not None:
            return [_npz_request(self, model, batch_size)]
        return [
            _json_request(self, index, entry, model, overrides or {}, batch_size)
            for index, entry in enumerate(self.entries or [])
        ]


def load_input_data(path: str | Path) -> InputData:
    """Read an ``--input-data`` file (``.npz`` or ``.json``); format errors raise InputSpecError."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".json"):
        raise InputSpecError(
            f"--input-data {path}: expected a .npz archive (numpy.savez) or a .json file "
            f"(perf_analyzer's input data format), got a {suffix or 'suffix-less'} file"
        )
    if not path.is_file():
        raise InputSpecError(f"--input-data {path}: no such file")
    if suffix == ".npz":
        return InputData(path, arrays=_read_npz(path))
    return InputData(path, entries=_read_json(path))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    where = f"--input-data {path}"
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputSpecError(f"{where}: cannot read it as a .npz archive: {exc}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputSpecError(f"{where}: holds a single .npy array; expected a .npz archive")
    arrays: dict[str, np.ndarray] = {}
    with archive:
        for name in archive.files:
            try:
                arrays[name] = archive[name]
            except ValueError:
                # Object arrays need pickle, which can run code: refused.
                raise InputSpecError(
                    f"{where}: array '{name}' is an object array, which only loads with "
                    "pickle; store BYTES inputs as bytes (dtype S) or str (dtype U) arrays"
                ) from None
    if not arrays:
        raise InputSpecError(f"{where}: the archive holds no arrays")
    return arrays


def _read_json(path: Path) -> list[dict[str, Any]]:
    where = f"--input-data {path}"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputSpecError(f"{where}: cannot read it: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputSpecError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(document, dict) or "data" not in document:
        raise InputSpecError(
            f'{where}: expected an object with a "data" list (perf_analyzer\'s format: '
            f'{{"data": [{{"INPUT": [...]}}, ...]}}), got {_json_kind(document)}'
        )
    unknown = sorted(set(document) - {"data", "validation_data"})
    if unknown:
        raise InputSpecError(
            f'{where}: unknown key(s) {", ".join(map(repr, unknown))}; expected "data" '
            '(and optionally "validation_data")'
        )
    data = document["data"]
    if not isinstance(data, list) or not data:
        raise InputSpecError(f'{where}: "data" must be a non-empty list, got {_json_kind(data)}')
    for index, entry in enumerate(data):
        if isinstance(entry, list):
            raise InputSpecError(
                f'{where}: "data" entry {index} is a list: sequence data streams are not '
                "supported; give one object per request"
            )
        if not isinstance(entry, dict):
            raise InputSpecError(
                f'{where}: "data" entry {index} must be an object of input name -> value, '
                f"got {_json_kind(entry)}"
            )
    return data


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    names: dict[type, str] = {
        dict: "an object",
        list: "a list",
        str: "a string",
        type(None): "null",
    }
    for kind, text in names.items():
        if isinstance(value, kind):
            return text
    return f"{value!r} (a number)"


def _check_names(where: str, model: ModelInputs, given: Iterable[str], what: str) -> None:
    given = list(given)
    for name in given:
        if model.get(name) is None:
            raise InputSpecError(
                f"{where}: {what} '{name}' is not an input of model '{model.model}' "
                f"(inputs: {model.names()})"
            )
    for tensor in model.inputs:
        if not tensor.optional and tensor.name not in given:
            raise InputSpecError(
                f"{where}: missing input '{tensor.name}' ({tensor.datatype} "
                f"{shape_text(tensor.dims)}) of model '{model.model}'; the file has "
                f"{', '.join(given) or 'nothing'}"
            )


def _npz_request(
    data: InputData, model: ModelInputs, batch_size: int | None
) -> dict[str, np.ndarray]:
    where = f"--input-data {data.path}"
    arrays = data.arrays or {}
    _check_names(where, model, arrays, "array")
    request: dict[str, np.ndarray] = {}
    batches: dict[str, int] = {}
    for tensor in model.inputs:
        if tensor.name not in arrays:
            continue  # an optional input the file leaves out
        name, array = tensor.name, arrays[tensor.name]
        request[name] = _npz_dtype(where, tensor, array)
        shape = tuple(array.shape)
        if model.batched:
            expected = f"[B, {', '.join(map(str, tensor.dims))}]" if tensor.dims else "[B]"
            expected += f" with B from 1 to {model.max_batch_size} (the model batches)"
            if (
                not shape
                or not _fits(tensor.dims, shape[1:])
                or not (1 <= shape[0] <= model.max_batch_size)
            ):
                raise InputSpecError(
                    f"{where}: input '{name}' of model '{model.model}' needs shape {expected}, "
                    f"got {shape_text(shape)}"
                )
            batches[name] = shape[0]
        elif not _fits(tensor.dims, shape):
            raise InputSpecError(
                f"{where}: input '{name}' of model '{model.model}' needs shape "
                f"{shape_text(tensor.dims)} (the model does not batch), got {shape_text(shape)}"
            )
    if len(set(batches.values())) > 1:
        sizes = ", ".join(f"{name} has {size}" for name, size in batches.items())
        raise InputSpecError(f"{where}: the arrays disagree on the batch size: {sizes}")
    if batches and batch_size is not None:
        batch = next(iter(batches.values()))
        if batch != batch_size:
            raise InputSpecError(
                f"{where}: --batch-size {batch_size} does not match the arrays' batch "
                f"dimension {batch}; an .npz holds the tensors as sent, batch included"
            )
    return request


def _npz_dtype(where: str, tensor: TensorSpec, array: np.ndarray) -> np.ndarray:
    what = f"{where}: input '{tensor.name}' is {tensor.datatype}"
    if tensor.datatype == "BYTES":
        if array.dtype.kind == "S":
            return array.astype(np.object_)
        if array.dtype.kind == "U":
            flat = np.empty(array.size, dtype=np.object_)
            flat[:] = [item.encode("utf-8") for item in array.reshape(-1).tolist()]
            return flat.reshape(array.shape)
        raise InputSpecError(f"{what}, expected a bytes (S) or str (U) array, got {array.dtype}")
    if tensor.datatype == "BF16":
        if array.dtype.kind == "u" and array.dtype.itemsize == 2:
            return array.astype(np.uint16)
        if array.dtype.kind == "f":
            from batchwire.clients.tensors import float_to_bf16

            return float_to_bf16(array)
        raise InputSpecError(
            f"{what}, expected a uint16 (bfloat16 bit patterns) or float array, got {array.dtype}"
        )
    wanted = NUMPY_DTYPES[tensor.datatype]
    if array.dtype.newbyteorder("=") != wanted:
        raise InputSpecError(f"{what}, expected a {wanted} array, got {array.dtype}")
    return array.astype(wanted, copy=False)


def _json_request(
    data: InputData,
    index: int,
    entry: Mapping[str, Any],
    model: ModelInputs,
    overrides: Mapping[str, tuple[int, ...]],
    batch_size: int | None,
) -> dict[str, np.ndarray]:
    where = f"--input-data {data.path}: entry {index}"
    _check_names(where, model, entry, "key")
    batch = check_batch_size(model, batch_size)
    request: dict[str, np.ndarray] = {}
    for name, value in entry.items():
        tensor = model.get(name)
        assert tensor is not None
        here = f"{where}, input '{name}'"
        content, shape = _json_parts(here, value)
        if shape is None:
            if name in overrides:
                shape = resolve_shape(model, tensor, overrides[name])
            elif tensor.variable:
                raise InputSpecError(
                    f'{here} has variable dims {shape_text(tensor.dims)}: give its "shape" '
                    f"in the entry or --shape {name}:<dims>"
                )
            else:
                shape = tensor.dims
        elif not _fits(tensor.dims, shape):
            raise InputSpecError(
                f"{here}: shape {shape_text(shape)} does not fit the input's dims "
                f"{shape_text(tensor.dims)} (the batch dimension is left out)"
            )
        sample = _json_values(here, tensor.datatype, content, shape)
        # perf_analyzer's entries are batch-1 samples: a batch repeats the sample.
        request[name] = np.repeat(sample[np.newaxis], batch, axis=0) if model.batched else sample
    return request


def _json_parts(here: str, value: Any) -> tuple[Any, tuple[int, ...] | None]:
    """(content, shape or None) of one tensor value in a JSON entry."""
    if isinstance(value, list):
        return value, None
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"content", "shape", "b64"})
        if unknown:
            raise InputSpecError(
                f"{here}: unknown key(s) {', '.join(map(repr, unknown))}; expected "
                '"content" and "shape", or "b64"'
            )
        shape = None
        if "shape" in value:
            raw = value["shape"]
            if not isinstance(raw, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw
            ):
                raise InputSpecError(
                    f'{here}: "shape" must be a list of whole numbers >= 0, got {raw!r}'
                )
            shape = tuple(raw)
        if "b64" in value:
            return {"b64": value["b64"]}, shape
        if "content" not in value:
            raise InputSpecError(f'{here}: the object has no "content" (or "b64")')
        return value["content"], shape
    raise InputSpecError(
        f'{here}: expected a list of values, {{"content": ..., "shape": [...]}} or '
        f'{{"b64": ...}}, got {_json_kind(value)}'
    )


def _flatten(values: Any) -> Iterator[Any]:
    for value in values:
        if isinstance(value, list):
            yield from _flatten(value)
        else:
            yield value


def _json_values(here: str, datatype: str, content: Any, shape: tuple[int, ...]) -> np.ndarray:
    """The array of ``datatype`` and ``shape`` (batch excluded) a JSON value holds."""
    count = math.prod(shape)
    if isinstance(content, dict) and "b64" in content:
        return _b64_values(here, datatype, content["b64"], shape)
    if not isinstance(content, list):
        raise InputSpecError(
            f'{here}: "content" must be a list of values or {{"b64": ...}}, '
            f"got {_json_kind(content)}"
        )
    values = list(_flatten(content))
    if len(values) != count:
        raise InputSpecError(
            f"{here}: shape {shape_text(shape)} needs {count} value(s), got {len(values)}"
        )
    expected, check = _JSON_CHECKS[_json_family(datatype)]
    for value in values:
        if not check(value, datatype):
            raise InputSpecError(f"{here} ({datatype}): expected {expected}, got {value!r}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = [value.encode("utf-8") for value in values]
        return array.reshape(shape)
    if datatype == "BF16":
        from batchwire.clients.tensors import float_to_bf16

        return float_to_bf16(np.array(values, dtype=np.float32)).reshape(shape)
    return np.array(values, dtype=NUMPY_DTYPES[datatype]).reshape(shape)


def _json_family(datatype: str) -> str:
    if datatype in ("FP16", "BF16", "FP32", "FP64"):
        return "float"
    if datatype in ("BOOL", "BYTES"):
        return datatype
    return "int"


def _is_int(value: Any, datatype: str) -> bool:
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    info = np.iinfo(NUMPY_DTYPES[datatype])
    return int(info.min) <= value <= int(info.max)


#: JSON value family -> (what the values must be, in words; the check of one value).
_JSON_CHECKS: dict[str, tuple[str, Callable[[Any, str], bool]]] = {
    "float": (
        "numbers",
        lambda v, _: isinstance(v, (int, float)) and not isinstance(v, bool),
    ),
    "int": ("whole numbers in the datatype's range", _is_int),
    "BOOL": ("true or false", lambda v, _: isinstance(v, bool)),
    "BYTES": ("strings", lambda v, _: isinstance(v, str)),
}


def _b64_values(here: str, datatype: str, text: Any, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(text, str):
        raise InputSpecError(f'{here}: "b64" must be a string, got {_json_kind(text)}')
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputSpecError(f'{here}: "b64" is not valid base64: {exc}') from None
    count = math.prod(shape)
    if datatype == "BYTES":
        try:
            return deserialize_bytes(raw, count).reshape(shape)
        except ValueError as exc:
            raise InputSpecError(
                f"{here}: the b64 data is not {count} length-prefixed BYTES element(s) "
                f"for shape {shape_text(shape)}: {exc}"
            ) from None
    wire = WIRE_DTYPES[datatype]
    if len(raw) != count * wire.itemsize:
        raise InputSpecError(
            f"{here}: shape {shape_text(shape)} of {datatype} needs {count * wire.itemsize} "
            f"bytes, the b64 data holds {len(raw)}"
        )
    return np.frombuffer(raw, dtype=wire).astype(NUMPY_DTYPES[datatype]).reshape(shape)
