"""GPU utilisation and memory through NVML (``pynvml`` from nvidia-ml-py), when available.

Optional: without the package, without the NVIDIA driver, or without a GPU,
:class:`GpuMonitor` reports no devices and the GPU metric families stay empty.
Every NVML call is guarded; a device that stops answering is skipped for that
scrape and never fails it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GpuSample:
    uuid: str
    #: 0.0 .. 1.0 over NVML's last sample period.
    utilization: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    power_watts: float | None


class GpuMonitor:
    """Reads every visible GPU's utilisation, memory and power (scrape time, any thread)."""

    def __init__(self) -> None:
        self._nvml = None
        self._handles: list[tuple[str, object]] = []
        self._lock = threading.Lock()
        try:
            import pynvml  # optional: batchwire[gpu]
        except ImportError:
            return
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # no driver / no GPU: NVMLError_LibraryNotFound, ...
            log.debug("NVML unavailable: %s", exc)
            return
        self._nvml = pynvml
        try:
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                uuid = pynvml.nvmlDeviceGetUUID(handle)
                if isinstance(uuid, bytes):
                    uuid = uuid.decode()
                self._handles.append((str(uuid), handle))
        except Exception as exc:
            log.warning("NVML: could not enumerate GPUs: %s", exc)
        if self._handles:
            log.info("GPU metrics from NVML for %d device(s)", len(self._handles))

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def samples(self) -> list[GpuSample]:
        nvml = self._nvml
        if nvml is None:
            return []
        out: list[GpuSample] = []
        with self._lock:
            for uuid, handle in self._handles:
                out.append(
                    GpuSample(
                        uuid,
                        _guard(lambda h: nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100.0, handle),
                        _guard(lambda h: int(nvml.nvmlDeviceGetMemoryInfo(h).used), handle),
                        _guard(lambda h: int(nvml.nvmlDeviceGetMemoryInfo(h).total), handle),
                        _guard(lambda h: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0, handle),
                    )
                )
        return out

    def close(self) -> None:
        nvml, self._nvml = self._nvml, None
        self._handles = []
        if nvml is not None:
            with contextlib.suppress(Exception):
                nvml.nvmlShutdown()


def _guard(read: Callable[[Any], T], handle: Any) -> T | None:
    """``read(handle)``, or None where NVML fails for this device or metric."""
    try:
        return read(handle)
    except Exception:
        return None
