"""Which device each model instance runs on, derived from the spec's instance groups.

Rules (Triton's ``instance_group``):

- ``CPU``: ``count`` instances on ``cpu``.
- ``GPU``: ``count`` instances on each of ``gpus`` (all visible GPUs when empty);
  an error when CUDA is not available or a listed GPU does not exist.
- ``AUTO``: like ``GPU`` (on ``gpus``, or all visible GPUs) when CUDA is available,
  else like ``CPU``.

Instances are numbered in the order of the groups, then GPUs, then count.
"""

from __future__ import annotations

import os

import torch

from batchwire.core.errors import ModelLoadError
from batchwire.core.spec import DeviceKind, ModelSpec


def resolve_devices(spec: ModelSpec) -> list[torch.device]:
    """One device per model instance (raises ModelLoadError for an impossible group)."""
    devices: list[torch.device] = []
    where = f"model '{spec.name}' version '{spec.version}'"
    for number, group in enumerate(spec.instance_groups):
        kind = group.kind
        if kind is DeviceKind.AUTO:
            kind = DeviceKind.GPU if torch.cuda.is_available() else DeviceKind.CPU
        if kind is DeviceKind.CPU:
            devices.extend(torch.device("cpu") for _ in range(group.count))
            continue
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"{where}: instance_group {number} asks for KIND_GPU but CUDA is not available "
                "on this machine (use KIND_CPU or KIND_AUTO)"
            )
        visible = torch.cuda.device_count()
        gpus = group.gpus or tuple(range(visible))
        for gpu in gpus:
            if not 0 <= gpu < visible:
                raise ModelLoadError(
                    f"{where}: instance_group {number} names GPU {gpu} but only "
                    f"{visible} GPU(s) are visible (0..{visible - 1})"
                )
            devices.extend(torch.device("cuda", gpu) for _ in range(group.count))
    if not devices:
        raise ModelLoadError(f"{where}: instance_group yields no instances")
    return devices


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
