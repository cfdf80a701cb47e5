"""Turn a filled, validated ModelConfig into the plain :class:`ModelSpec` the server uses.

Nothing downstream of the repository sees protobuf: the batcher and the data
plane read only the spec built here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchwire.core.datatypes import CONFIG_TO_V2
from batchwire.core.spec import (
    DEFAULT_INLINE_BELOW_US,
    BatchingSpec,
    DeviceKind,
    ExecutionSpec,
    InstanceGroupSpec,
    ModelSpec,
    QueuePolicy,
    TensorSpec,
    TimeoutAction,
    WarmupSpec,
)
from batchwire.protos import model_config_pb2 as mc
from batchwire.server.repository.errors import load_error
from batchwire.server.repository.params import BatchwireOptions, parse_options
from batchwire.server.repository.platforms import Format, spec_platform

_KINDS = {
    mc.ModelInstanceGroup.KIND_AUTO: DeviceKind.AUTO,
    mc.ModelInstanceGroup.KIND_CPU: DeviceKind.CPU,
    mc.ModelInstanceGroup.KIND_GPU: DeviceKind.GPU,
    # KIND_MODEL lets the model place itself; batchwire picks like AUTO.
    mc.ModelInstanceGroup.KIND_MODEL: DeviceKind.AUTO,
}
_ACTIONS = {
    mc.ModelQueuePolicy.REJECT: TimeoutAction.REJECT,
    mc.ModelQueuePolicy.DELAY: TimeoutAction.DELAY,
}
#: Warmup folder, relative to the model folder (Triton's layout for input_data_file).
WARMUP_DIR = "warmup"


def _v2(data_type: int) -> str:
    return CONFIG_TO_V2[mc.DataType.Name(data_type)]


def _tensor(tensor: mc.ModelInput | mc.ModelOutput, is_input: bool) -> TensorSpec:
    reshape = tuple(tensor.reshape.shape) if tensor.HasField("reshape") else None
    return TensorSpec(
        name=tensor.name,
        datatype=_v2(tensor.data_type),
        dims=tuple(tensor.dims),
        reshape=reshape,
        optional=bool(is_input and tensor.optional),
        allow_ragged_batch=bool(is_input and tensor.allow_ragged_batch),
    )


def _queue_policy(policy: mc.ModelQueuePolicy) -> QueuePolicy:
    return QueuePolicy(
        timeout_action=_ACTIONS[policy.timeout_action],
        default_timeout_us=policy.default_timeout_microseconds,
        allow_timeout_override=policy.allow_timeout_override,
        max_queue_size=policy.max_queue_size,
    )


def _batching(config: mc.ModelConfig, options: BatchwireOptions) -> BatchingSpec | None:
    if not config.HasField("dynamic_batching"):
        return None
    batching = config.dynamic_batching
    # Only the extensions the config sets override BatchingSpec's defaults.
    extensions: dict[str, Any] = {
        key: value
        for key, value in (
            ("adaptive_delay", options.adaptive_delay),
            ("ragged_pad_value", options.ragged_pad_value),
            ("retry_by_halves", options.retry_by_halves),
            ("split_on_oom", options.split_on_oom),
        )
        if value is not None
    }
    return BatchingSpec(
        preferred_batch_sizes=tuple(batching.preferred_batch_size),
        max_queue_delay_us=batching.max_queue_delay_microseconds,
        preserve_ordering=batching.preserve_ordering,
        priority_levels=batching.priority_levels,
        default_priority_level=batching.default_priority_level,
        default_queue_policy=_queue_policy(batching.default_queue_policy),
        priority_queue_policy={
            level: _queue_policy(policy)
            for level, policy in sorted(batching.priority_queue_policy.items())
        },
        **extensions,
    )


def _instance_groups(config: mc.ModelConfig) -> tuple[InstanceGroupSpec, ...]:
    return tuple(
        InstanceGroupSpec(count=group.count, kind=_KINDS[group.kind], gpus=tuple(group.gpus))
        for group in config.instance_group
    )


def _execution(fmt: Format, options: BatchwireOptions) -> ExecutionSpec:
    inline = options.inline_below_us
    if inline is None:
        # Python models are arbitrary code that may block (I/O, sleeps, locks): on the
        # event loop that would stall every model, so they run inline only when asked.
        inline = 0 if fmt is Format.PYTHON else DEFAULT_INLINE_BELOW_US
    return ExecutionSpec(intra_op_threads=options.intra_op_threads, inline_below_us=inline)


def _warmups(config: mc.ModelConfig, model_dir: Path, path: object) -> tuple[WarmupSpec, ...]:
    warmups = []
    folder = model_dir / WARMUP_DIR
    for warmup in config.model_warmup:
        inputs: dict[str, tuple[str, tuple[int, ...], str]] = {}
        for name, sample in sorted(warmup.inputs.items()):
            source = sample.WhichOneof("input_data_type")
            if source == "zero_data":
                fill = "zero"
            elif source == "random_data":
                fill = "random"
            else:
                # validate_config refused '..' and absolute paths; a symbolic link
                # leading out of the warmup folder is refused here, where the folder is
                # known (the server must not read files outside the model).
                data_file = folder / sample.input_data_file
                if not data_file.resolve().is_relative_to(folder.resolve()):
                    raise load_error(
                        path,
                        f"model_warmup '{warmup.name}'.inputs['{name}'].input_data_file",
                        f"'{sample.input_data_file}' resolves outside the model's warmup "
                        "folder (a symbolic link leading out is not followed)",
                    )
                fill = str(data_file)
            inputs[name] = (_v2(sample.data_type), tuple(sample.dims), fill)
        warmups.append(
            WarmupSpec(
                name=warmup.name,
                batch_size=warmup.batch_size,
                inputs=inputs,
                count=max(warmup.count, 1),
            )
        )
    return tuple(warmups)


def config_to_spec(
    config: mc.ModelConfig, fmt: Format, version: str, model_dir: Path, path: object
) -> ModelSpec:
    """The ModelSpec of one version of a filled, validated config."""
    options = parse_options(config, path)
    try:
        return ModelSpec(
            name=config.name,
            version=version,
            platform=spec_platform(fmt),
            max_batch_size=config.max_batch_size,
            inputs=tuple(_tensor(t, True) for t in config.input),
            outputs=tuple(_tensor(t, False) for t in config.output),
            batching=_batching(config, options),
            instance_groups=_instance_groups(config),
            warmup=_warmups(config, model_dir, path),
            execution=_execution(fmt, options),
            parameters={key: p.string_value for key, p in sorted(config.parameters.items())},
            max_input_bytes=options.max_input_bytes or 0,
        )
    except ValueError as exc:
        # The spec re-checks its invariants; validate_config should have caught them first.
        raise load_error(path, "", str(exc)) from None
