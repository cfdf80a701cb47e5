"""Where a model's instances go, from its ``instance_group`` entries.

The batcher owns instances; this only turns the config's groups into one
device per instance, so every caller places them the same way:

* ``KIND_CPU``: ``count`` instances on ``cpu``;
* ``KIND_GPU``: ``count`` instances on each of ``gpus`` (all visible GPUs when
  the list is empty); a ModelLoadError when CUDA is unavailable or a listed GPU
  does not exist;
* ``KIND_AUTO`` (and ``KIND_MODEL``): ``count`` instances spread round-robin
  over ``gpus`` (all visible GPUs when empty), or on ``cpu`` when CUDA is
  unavailable.
"""

from __future__ import annotations

import logging

import torch

from batchwire.core.errors import ModelLoadError
from batchwire.core.spec import DeviceKind, ModelSpec

log = logging.getLogger(__name__)


def _gpu_devices(
    spec: ModelSpec, index: int, count: int, gpus: tuple[int, ...]
) -> list[torch.device]:
    where = f"model '{spec.name}' version {spec.version}: instance_group[{index}]"
    if not torch.cuda.is_available():
        raise ModelLoadError(
            f"{where}: kind KIND_GPU but CUDA is not available (expected a visible GPU; "
            "use KIND_CPU or KIND_AUTO to run on CPU)"
        )
    visible = torch.cuda.device_count()
    missing = [gpu for gpu in gpus if gpu >= visible]
    if missing:
        raise ModelLoadError(
            f"{where}: gpus {list(gpus)} include {missing}, but only {visible} GPU(s) are "
            f"visible (expected ids in 0..{visible - 1})"
        )
    return [torch.device("cuda", gpu) for gpu in (gpus or range(visible)) for _ in range(count)]


def resolve_devices(spec: ModelSpec) -> list[torch.device]:
    """One device per instance, in instance order; raises ModelLoadError for KIND_GPU without CUDA."""
    devices: list[torch.device] = []
    for index, group in enumerate(spec.instance_groups):
        if group.kind is DeviceKind.CPU:
            devices.extend(torch.device("cpu") for _ in range(group.count))
        elif group.kind is DeviceKind.GPU:
            devices.extend(_gpu_devices(spec, index, group.count, group.gpus))
        elif torch.cuda.is_available():
            ids = list(group.gpus) or list(range(torch.cuda.device_count()))
            devices.extend(torch.device("cuda", ids[i % len(ids)]) for i in range(group.count))
        else:
            devices.extend(torch.device("cpu") for _ in range(group.count))
    log.info(
        "model '%s' version %s: %d instance(s) on %s",
        spec.name,
        spec.version,
        len(devices),
        ", ".join(str(d) for d in devices),
    )
    return devices
