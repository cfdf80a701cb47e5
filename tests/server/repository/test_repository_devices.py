"""resolve_devices: instance groups to one device per instance."""

from __future__ import annotations

import pytest
import torch

from batchwire.core.errors import ModelLoadError
from batchwire.core.spec import DeviceKind, InstanceGroupSpec, ModelSpec, TensorSpec
from batchwire.server.repository import resolve_devices

CUDA = torch.cuda.is_available()


def _spec(*groups: InstanceGroupSpec) -> ModelSpec:
    return ModelSpec(
        name="m",
        version="1",
        platform="pytorch_libtorch",
        max_batch_size=4,
        inputs=(TensorSpec("I", "FP32", (2,)),),
        outputs=(TensorSpec("O", "FP32", (2,)),),
        instance_groups=groups,
    )


def test_cpu_groups_count_instances() -> None:
    spec = _spec(InstanceGroupSpec(2, DeviceKind.CPU), InstanceGroupSpec(1, DeviceKind.CPU))
    assert resolve_devices(spec) == [torch.device("cpu")] * 3


@pytest.mark.skipif(CUDA, reason="checks the CPU fallback")
def test_auto_falls_back_to_cpu() -> None:
    assert (
        resolve_devices(_spec(InstanceGroupSpec(2, DeviceKind.AUTO))) == [torch.device("cpu")] * 2
    )


@pytest.mark.skipif(CUDA, reason="checks the error without CUDA")
def test_gpu_without_cuda_is_a_load_error() -> None:
    with pytest.raises(ModelLoadError, match=r"instance_group\[0\]: kind KIND_GPU but CUDA"):
        resolve_devices(_spec(InstanceGroupSpec(1, DeviceKind.GPU)))


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_and_auto_with_cuda() -> None:
    visible = torch.cuda.device_count()
    gpu = resolve_devices(_spec(InstanceGroupSpec(2, DeviceKind.GPU, (0,))))
    assert gpu == [torch.device("cuda", 0)] * 2
    auto = resolve_devices(_spec(InstanceGroupSpec(visible + 1, DeviceKind.AUTO)))
    assert auto == [torch.device("cuda", i % visible) for i in range(visible + 1)]
    with pytest.raises(ModelLoadError, match="visible"):
        resolve_devices(_spec(InstanceGroupSpec(1, DeviceKind.GPU, (visible,))))
