"""Instance groups to devices."""

from __future__ import annotations

import pytest
import torch
from batching_testkit import make_spec

from batchwire.batching import resolve_devices
from batchwire.core.errors import ModelLoadError
from batchwire.core.spec import DeviceKind, InstanceGroupSpec


def spec_with(*groups):
    return make_spec(instance_groups=groups) if groups else make_spec()


def _make(*groups):
    from dataclasses import replace

    return replace(make_spec(), instance_groups=tuple(groups))


def test_cpu_group_count():
    assert (
        resolve_devices(_make(InstanceGroupSpec(count=3, kind=DeviceKind.CPU)))
        == [torch.device("cpu")] * 3
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA fallback")
def test_auto_falls_back_to_cpu_and_gpu_is_an_error_without_cuda():
    groups = (InstanceGroupSpec(count=2), InstanceGroupSpec(count=1, kind=DeviceKind.CPU))
    assert resolve_devices(_make(*groups)) == [torch.device("cpu")] * 3
    with pytest.raises(ModelLoadError, match="KIND_GPU but CUDA is not available"):
        resolve_devices(_make(InstanceGroupSpec(kind=DeviceKind.GPU, gpus=(0,))))
