"""Consistency checks on a filled ModelConfig, before it becomes a ModelSpec.

Each check raises a ModelLoadError naming the file, the field, and expected
versus got. Fields batchwire does not act on but that cannot change results
(``optimization``, rate limiters...) are logged as a
warning once per file and field instead, so Triton repositories still load.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from pathlib import PurePosixPath

from batchwire.core.datatypes import CONFIG_TO_V2
from batchwire.protos import model_config_pb2 as mc
from batchwire.server.repository.errors import load_error, one_of
from batchwire.server.repository.params import BATCHING_KEYS, parse_options
from batchwire.server.repository.platforms import Format

log = logging.getLogger(__name__)

#: ModelConfig fields that are accepted but have no effect in batchwire.
IGNORED_MODEL_FIELDS = (
    "optimization",
    "cc_model_filenames",
    "metric_tags",
    "model_repository_agents",
)
#: ModelInstanceGroup fields that are accepted but have no effect in batchwire.
IGNORED_GROUP_FIELDS = ("rate_limiter", "secondary_devices", "profile", "passive", "host_policy")

_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def warn_once(path: object, field: str, message: str) -> None:
    """Log ``message`` as a warning the first time for this (file, field)."""
    key = (str(path), field)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning("%s: %s: %s", path, field, message)


def _set_fields(message: object) -> set[str]:
    """Names of the fields of a protobuf message that hold a non-default value."""
    return {descriptor.name for descriptor, _ in message.ListFields()}  # type: ignore[attr-defined]


def _datatype(value: int, path: object, field: str, fmt: Format) -> str:
    """The v2 datatype for a config DataType value, or a ModelLoadError."""
    try:
        name = mc.DataType.Name(value)
    except ValueError:
        name = str(value)
    if name not in CONFIG_TO_V2:
        raise load_error(
            path,
            field,
            f"data_type {name} is not a datatype (expected one of {one_of(CONFIG_TO_V2)})",
        )
    if name == "TYPE_STRING" and fmt is not Format.PYTHON:
        raise load_error(
            path,
            field,
            "data_type TYPE_STRING needs the python backend (expected a numeric datatype "
            "for a TorchScript or torch.export model)",
        )
    return CONFIG_TO_V2[name]


def _check_dims(dims: Sequence[int], path: object, field: str, what: str = "dims") -> None:
    if any(d == 0 or d < -1 for d in dims):
        raise load_error(
            path,
            field,
            f"{what} {list(dims)} has a 0 or < -1 entry (expected > 0, or -1 for variable)",
        )


def _check_tensor(
    tensor: mc.ModelInput | mc.ModelOutput, kind: str, path: object, fmt: Format
) -> None:
    field = f"{kind} '{tensor.name}'"
    _datatype(tensor.data_type, path, field, fmt)
    if tensor.is_shape_tensor:
        raise load_error(path, field, "is_shape_tensor is not supported (expected false)")
    if not tensor.dims and not tensor.HasField("reshape"):
        raise load_error(
            path,
            field,
            "dims is empty (expected at least one dimension, batch excluded; "
            "a scalar is dims: [1] with reshape: { shape: [] })",
        )
    _check_dims(tensor.dims, path, field)
    if tensor.HasField("reshape"):
        shape = list(tensor.reshape.shape)
        _check_dims(shape, path, field, "reshape shape")
        if -1 not in shape and -1 not in tensor.dims:
            want, got = math.prod(tensor.dims), math.prod(shape)
            if want != got:
                raise load_error(
                    path,
                    field,
                    f"reshape shape {shape} holds {got} elements but dims {list(tensor.dims)} "
                    f"hold {want} (expected the same element count)",
                )
    if kind == "output" and tensor.label_filename:
        warn_once(path, f"{field}.label_filename", "ignored (batchwire has no classification)")


def _check_tensors(
    tensors: Sequence[mc.ModelInput | mc.ModelOutput],
    kind: str,
    path: object,
    fmt: Format,
) -> None:
    if not tensors:
        raise load_error(path, kind, f"no {kind}s declared (expected at least one {kind})")
    seen: set[str] = set()
    for index, tensor in enumerate(tensors):
        if not tensor.name:
            raise load_error(path, f"{kind}[{index}]", "name is empty (expected a name)")
        if tensor.name in seen:
            raise load_error(
                path, f"{kind} '{tensor.name}'", f"duplicate {kind} name (expected unique names)"
            )
        seen.add(tensor.name)
        _check_tensor(tensor, kind, path, fmt)


def _check_scheduling(config: mc.ModelConfig, path: object) -> None:
    choice = config.WhichOneof("scheduling_choice")
    if choice in ("sequence_batching", "ensemble_scheduling"):
        raise load_error(
            path,
            choice,
            "is not supported by batchwire (expected dynamic_batching or no scheduler)",
        )
    for name in ("batch_input", "batch_output"):
        if getattr(config, name):
            raise load_error(path, name, "is not supported by batchwire (expected none)")
    if config.HasField("model_operations") and config.model_operations.op_library_filename:
        raise load_error(
            path,
            "model_operations",
            "custom operation libraries are not supported (expected none; load them "
            "with torch.ops.load_library in a python model)",
        )
    if config.model_transaction_policy.decoupled:
        raise load_error(
            path,
            "model_transaction_policy.decoupled",
            "decoupled models are not supported (expected false)",
        )


def _check_queue_policy(policy: mc.ModelQueuePolicy, path: object, field: str) -> None:
    if policy.timeout_action not in mc.ModelQueuePolicy.TimeoutAction.values():
        raise load_error(
            path, f"{field}.timeout_action", f"{policy.timeout_action} is not REJECT or DELAY"
        )


def _check_batching(config: mc.ModelConfig, path: object) -> None:
    if config.max_batch_size < 0:
        raise load_error(path, "max_batch_size", f"must be >= 0, got {config.max_batch_size}")
    if not config.HasField("dynamic_batching"):
        return
    batching = config.dynamic_batching
    if config.max_batch_size == 0:
        raise load_error(
            path,
            "dynamic_batching",
            "needs batching but max_batch_size is 0 (expected max_batch_size >= 1)",
        )
    for size in batching.preferred_batch_size:
        if not 1 <= size <= config.max_batch_size:
            raise load_error(
                path,
                "dynamic_batching.preferred_batch_size",
                f"{size} is outside 1..{config.max_batch_size} (max_batch_size)",
            )
    levels = batching.priority_levels
    default = batching.default_priority_level
    if levels == 0 and default != 0:
        raise load_error(
            path,
            "dynamic_batching.default_priority_level",
            f"{default} is out of range (expected 0 when priority_levels is 0)",
        )
    if levels and not 1 <= default <= levels:
        raise load_error(
            path,
            "dynamic_batching.default_priority_level",
            f"{default} is out of range (expected 1..{levels}, priority_levels)",
        )
    _check_queue_policy(
        batching.default_queue_policy, path, "dynamic_batching.default_queue_policy"
    )
    for level, policy in batching.priority_queue_policy.items():
        field = f"dynamic_batching.priority_queue_policy[{level}]"
        if not 1 <= level <= max(levels, 1):
            raise load_error(
                path, field, f"level {level} is out of range (expected 1..{max(levels, 1)})"
            )
        _check_queue_policy(policy, path, field)


def _check_instance_groups(config: mc.ModelConfig, path: object) -> None:
    for index, group in enumerate(config.instance_group):
        field = f"instance_group[{index}]"
        # proto3 enums are open: a number outside Kind parses and must be refused here.
        if group.kind not in mc.ModelInstanceGroup.Kind.values():
            kinds = ", ".join(mc.ModelInstanceGroup.Kind.keys())
            raise load_error(path, f"{field}.kind", f"{group.kind} is not one of {kinds}")
        if group.count < 1:
            raise load_error(path, f"{field}.count", f"must be >= 1, got {group.count}")
        if group.kind == mc.ModelInstanceGroup.KIND_CPU and group.gpus:
            raise load_error(
                path,
                f"{field}.gpus",
                f"{list(group.gpus)} set on a KIND_CPU group (expected none, or kind KIND_GPU)",
            )
        if any(gpu < 0 for gpu in group.gpus):
            raise load_error(
                path, f"{field}.gpus", f"{list(group.gpus)} has a negative id (expected >= 0)"
            )
        for name in sorted(_set_fields(group) & set(IGNORED_GROUP_FIELDS)):
            warn_once(path, f"{field}.{name}", "is set but batchwire ignores it")


def _check_warmup(config: mc.ModelConfig, path: object, fmt: Format) -> None:
    inputs = {tensor.name: tensor for tensor in config.input}
    for index, warmup in enumerate(config.model_warmup):
        field = f"model_warmup[{index}]"
        if not warmup.name:
            raise load_error(path, f"{field}.name", "is empty (expected a name)")
        field = f"model_warmup '{warmup.name}'"
        if config.max_batch_size > 0 and not 1 <= warmup.batch_size <= config.max_batch_size:
            raise load_error(
                path,
                f"{field}.batch_size",
                f"{warmup.batch_size} is outside 1..{config.max_batch_size} (max_batch_size)",
            )
        if config.max_batch_size == 0 and warmup.batch_size > 1:
            raise load_error(
                path,
                f"{field}.batch_size",
                f"{warmup.batch_size} but the model does not batch (expected 0 or 1)",
            )
        missing = sorted(n for n, t in inputs.items() if not t.optional and n not in warmup.inputs)
        if missing:
            raise load_error(path, f"{field}.inputs", f"no sample for input(s) {one_of(missing)}")
        for name, sample in warmup.inputs.items():
            sample_field = f"{field}.inputs['{name}']"
            if name not in inputs:
                raise load_error(
                    path,
                    sample_field,
                    f"'{name}' is not a model input (expected one of {one_of(inputs)})",
                )
            got = _datatype(sample.data_type, path, sample_field, fmt)
            want = CONFIG_TO_V2[mc.DataType.Name(inputs[name].data_type)]
            if got != want:
                raise load_error(path, sample_field, f"data_type is {got} but the input is {want}")
            if any(d < 1 for d in sample.dims):
                raise load_error(
                    path,
                    sample_field,
                    f"dims {list(sample.dims)} must be concrete (expected every entry >= 1)",
                )
            elements = max(warmup.batch_size, 1) * math.prod(sample.dims)
            if elements > WARMUP_MAX_ELEMENTS:
                raise load_error(
                    path,
                    sample_field,
                    f"dims {list(sample.dims)} x batch_size {max(warmup.batch_size, 1)} make "
                    f"{elements} elements, expected at most {WARMUP_MAX_ELEMENTS} (warmup "
                    "data is allocated at load)",
                )
            source = sample.WhichOneof("input_data_type")
            if source is None:
                raise load_error(
                    path,
                    sample_field,
                    "has no data (expected zero_data, random_data or input_data_file)",
                )
            if source == "input_data_file":
                problem = _warmup_file_problem(sample.input_data_file)
                if problem:
                    raise load_error(path, f"{sample_field}.input_data_file", problem)


#: Most elements one warmup sample may hold (batch included): 64 Mi, 256 MiB of FP32.
WARMUP_MAX_ELEMENTS = 1 << 26


def _warmup_file_problem(name: str) -> str:
    """Why ``input_data_file`` cannot name a file of the model's ``warmup`` folder ("" if it can)."""
    parts = PurePosixPath(name).parts
    if not name or "\0" in name:
        return f"'{name[:60]}' is not a file name (expected a file of the model's warmup folder)"
    if PurePosixPath(name).is_absolute() or ".." in parts:
        return (
            f"'{name[:200]}' leads out of the model's warmup folder (expected a path inside "
            "it, without '..')"
        )
    return ""


def _check_parameters(config: mc.ModelConfig, path: object, fmt: Format) -> None:
    parse_options(config, path)
    if not config.HasField("dynamic_batching"):
        for key in BATCHING_KEYS:
            if key in config.parameters:
                warn_once(path, f"parameters['{key}']", "has no effect without dynamic_batching")


def validate_config(config: mc.ModelConfig, fmt: Format, path: object) -> None:
    """Check a filled config; raises ModelLoadError on the first inconsistency."""
    _check_scheduling(config, path)
    _check_batching(config, path)
    _check_tensors(config.input, "input", path, fmt)
    _check_tensors(config.output, "output", path, fmt)
    _check_instance_groups(config, path)
    _check_warmup(config, path, fmt)
    _check_parameters(config, path, fmt)
    for name in sorted(_set_fields(config) & set(IGNORED_MODEL_FIELDS)):
        warn_once(path, name, "is set but batchwire ignores it")
