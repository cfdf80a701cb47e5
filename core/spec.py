"""What the data plane and the batcher know about a model: plain, validated dataclasses.

The model repository builds a :class:`ModelSpec` from ``config.pbtxt``; nothing
downstream of it sees protobuf. Dimensions exclude the batch dimension; ``-1``
marks a variable dimension.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from batchwire.core.datatypes import fill_value_problem, is_known

_K = TypeVar("_K")
_V = TypeVar("_V")


def _frozen_map(value: Mapping[_K, _V] | None) -> Mapping[_K, _V]:
    return MappingProxyType(dict(value or {}))


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One model input or output."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    #: Shape the model sees instead of ``dims`` (Triton's ``reshape``), batch excluded.
    reshape: tuple[int, ...] | None = None
    optional: bool = False
    #: Requests of different lengths batch together by padding (inputs only).
    allow_ragged_batch: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("tensor name must not be empty")
        if not is_known(self.datatype):
            raise ValueError(f"tensor '{self.name}': unknown datatype '{self.datatype}'")
        for d in self.dims:
            if d < -1 or d == 0:
                raise ValueError(
                    f"tensor '{self.name}': dims must be positive or -1, got {list(self.dims)}"
                )


class TimeoutAction(enum.Enum):
    """What happens to a request whose queue timeout expires (Triton's semantics)."""

    REJECT = "REJECT"  # fail it with UNAVAILABLE
    DELAY = "DELAY"  # keep it, but schedule it after every request still in time


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """Per-priority-level queue policy; 0 means unlimited / no timeout."""

    timeout_action: TimeoutAction = TimeoutAction.REJECT
    default_timeout_us: int = 0
    allow_timeout_override: bool = False
    max_queue_size: int = 0

    def __post_init__(self) -> None:
        if self.default_timeout_us < 0 or self.max_queue_size < 0:
            raise ValueError(
                "queue policy: default_timeout_microseconds and max_queue_size must be >= 0, "
                f"got {self.default_timeout_us} and {self.max_queue_size}"
            )


@dataclass(frozen=True, slots=True)
class BatchingSpec:
    """Dynamic batching settings (Triton's ``dynamic_batching`` plus batchwire's extensions)."""

    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    preserve_ordering: bool = False
    #: 0 means one level; levels are 1..priority_levels, 1 the highest.
    priority_levels: int = 0
    default_priority_level: int = 0
    default_queue_policy: QueuePolicy = field(default_factory=QueuePolicy)
    priority_queue_policy: Mapping[int, QueuePolicy] = field(default_factory=dict)
    #: batchwire: hold a batch open only while arrivals predict more requests in time.
    adaptive_delay: bool = True
    #: batchwire: value ragged inputs are padded with.
    ragged_pad_value: float = 0.0
    #: batchwire: on a failing multi-request batch, retry halves to isolate the poisoned request.
    retry_by_halves: bool = True
    #: batchwire: on CUDA out-of-memory, split the batch and retry before failing anyone.
    split_on_oom: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "priority_queue_policy", _frozen_map(self.priority_queue_policy))
        if any(size <= 0 for size in self.preferred_batch_sizes):
            raise ValueError(
                f"preferred_batch_size entries must be positive, got {list(self.preferred_batch_sizes)}"
            )
        if self.max_queue_delay_us < 0:
            raise ValueError(
                f"max_queue_delay_microseconds must be >= 0, got {self.max_queue_delay_us}"
            )
        levels = self.priority_levels
        if levels and not 1 <= self.default_priority_level <= levels:
            raise ValueError(
                f"default_priority_level must be in 1..{levels} (priority_levels), "
                f"got {self.default_priority_level}"
            )
        for level in self.priority_queue_policy:
            if not 1 <= level <= max(levels, 1):
                raise ValueError(
                    f"priority_queue_policy key {level} is outside 1..{max(levels, 1)} (priority_levels)"
                )

    def queue_policy(self, level: int) -> QueuePolicy:
        """The queue policy for a priority level."""
        return self.priority_queue_policy.get(level, self.default_queue_policy)


class DeviceKind(enum.Enum):
    AUTO = "AUTO"  # CUDA when available, else CPU
    CPU = "CPU"
    GPU = "GPU"


@dataclass(frozen=True, slots=True)
class InstanceGroupSpec:
    """``count`` instances of the model on ``kind`` (and, for GPU, on each of ``gpus``)."""

    count: int = 1
    kind: DeviceKind = DeviceKind.AUTO
    gpus: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"instance_group count must be >= 1, got {self.count}")


#: Default :attr:`ExecutionSpec.inline_below_us`: batches this short cost less than the
#: two thread hand-offs they would otherwise pay (see :mod:`batchwire.batching.placement`).
DEFAULT_INLINE_BELOW_US = 500


@dataclass(frozen=True, slots=True)
class ExecutionSpec:
    """How batches run on a model's CPU instances (``batchwire.*`` config parameters)."""

    #: torch intra-op threads of each CPU instance's worker thread. None: the server's
    #: default (``--intra-op-threads``), else the usable cores shared among the model's
    #: CPU instances.
    intra_op_threads: int | None = None
    #: Run a CPU batch on the event-loop thread, skipping the hand-off to the instance's
    #: worker thread and back, while the model's recent batches took less than this many
    #: microseconds each. 0 never does.
    inline_below_us: int = DEFAULT_INLINE_BELOW_US

    def __post_init__(self) -> None:
        if self.intra_op_threads is not None and self.intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be >= 1, got {self.intra_op_threads}")
        if self.inline_below_us < 0:
            raise ValueError(f"inline_below_us must be >= 0, got {self.inline_below_us}")


@dataclass(frozen=True, slots=True)
class WarmupSpec:
    """One ``model_warmup`` entry: run ``count`` batches of ``batch_size`` before ready."""

    name: str
    batch_size: int
    #: input name -> (datatype, dims, fill) where fill is "zero", "random" or a file path.
    inputs: Mapping[str, tuple[str, tuple[int, ...], str]]
    count: int = 1


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything the data plane and the batcher need to know about one model version."""

    name: str
    version: str
    platform: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: None: no dynamic batching; each request runs alone (Triton's default scheduler).
    batching: BatchingSpec | None = None
    instance_groups: tuple[InstanceGroupSpec, ...] = (InstanceGroupSpec(),)
    warmup: tuple[WarmupSpec, ...] = ()
    execution: ExecutionSpec = ExecutionSpec()
    parameters: Mapping[str, str] = field(default_factory=dict)
    #: Largest input tensor a request may carry, in bytes (``batchwire.max_input_bytes``;
    #: BYTES tensors as sent, 4-byte length prefixes included); 0: no limit.
    max_input_bytes: int = 0
    #: name -> spec lookups, derived once (the request path reads them per request).
    input_map: Mapping[str, TensorSpec] = field(init=False, repr=False, compare=False)
    output_map: Mapping[str, TensorSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameters", _frozen_map(self.parameters))
        object.__setattr__(self, "input_map", _frozen_map({t.name: t for t in self.inputs}))
        object.__setattr__(self, "output_map", _frozen_map({t.name: t for t in self.outputs}))
        if self.max_batch_size < 0:
            raise ValueError(f"max_batch_size must be >= 0, got {self.max_batch_size}")
        if self.max_input_bytes < 0:
            raise ValueError(f"max_input_bytes must be >= 0, got {self.max_input_bytes}")
        if self.batching is not None and self.max_batch_size == 0:
            raise ValueError("dynamic_batching needs max_batch_size > 0")
        if self.batching is not None:
            pad = self.batching.ragged_pad_value
            for t in self.inputs:
                problem = fill_value_problem(pad, t.datatype) if t.allow_ragged_batch else None
                if problem is not None:
                    raise ValueError(
                        f"batchwire.ragged_pad_value {pad:g} cannot pad ragged input "
                        f"'{t.name}' ({t.datatype}): {problem}"
                    )
        for kind, tensors in (("input", self.inputs), ("output", self.outputs)):
            names = [t.name for t in tensors]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"duplicate {kind} name(s): {', '.join(duplicates)}")

    @property
    def batched(self) -> bool:
        """True when requests carry a leading batch dimension (max_batch_size > 0)."""
        return self.max_batch_size > 0
