"""Devices an inference worker serves on: an NVIDIA GPU through NVML, or the CPU.

Both answer the same ``Device`` interface, so the model host accounts memory the same
way on either. On a GPU the figures are NVML's; on the CPU the capacity is a configured
budget and "used" is this process's resident memory.
"""

from __future__ import annotations

import contextlib
import os
import platform
from typing import Any, Protocol

import psutil

from inference_workers.errors import WorkerError
from inference_workers.types import DeviceState


class DeviceError(WorkerError):
    """The device named in the settings cannot be opened."""


class Device(Protocol):
    """One device a worker hosts models on."""

    kind: str
    index: int
    # The worker's own fixed use of the device (a GPU's CUDA context and primed cuBLAS
    # workspaces), taken off the capacity ``state`` offers models; 0 on the CPU.
    own_bytes: int

    def state(self) -> DeviceState:
        """Measures the device now."""
        ...

    def process_used_bytes(self) -> int | None:
        """This process's use of the device now, or None where the device cannot tell."""
        ...

    def own_use_add(self, grown: int) -> None:
        """Counts ``grown`` more bytes as the worker's own fixed use (off what it offers)."""
        ...

    def close(self) -> None:
        """Releases any handle held on the device."""
        ...


class CpuDevice:
    """The CPU with a memory budget; used memory is this process's RSS."""

    kind = "cpu"
    index = 0

    def __init__(self, *, memory_budget_bytes: int) -> None:
        self._budget = memory_budget_bytes
        self.own_bytes = 0  # the interpreter and imports are in the RSS the budget is checked against
        self._process = psutil.Process(os.getpid())
        self._name = platform.processor() or platform.machine() or "cpu"

    def state(self) -> DeviceState:
        used = self._process.memory_info().rss
        return DeviceState(
            kind="cpu",
            index=0,
            name=self._name,
            uuid=f"cpu-{platform.node()}",
            total_bytes=self._budget,
            used_bytes=used,
            free_bytes=max(self._budget - used, 0),
            utilisation_pct=self._process.cpu_percent(interval=None),
        )

    def process_used_bytes(self) -> int | None:
        return int(self._process.memory_info().rss)

    def own_use_add(self, grown: int) -> None:
        self.own_bytes += grown

    def close(self) -> None:
        return None


class NvmlDevice:
    """An NVIDIA GPU read through NVML (pynvml from the nvidia-ml-py package)."""

    kind = "cuda"

    def __init__(self, *, index: int, budget_bytes: int = 0) -> None:
        import pynvml

        self._budget = budget_bytes  # 0: the whole device; else this worker's share of it

        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except pynvml.NVMLError as exc:
            raise DeviceError(f"cannot open cuda:{index} through NVML: {exc}") from exc
        self._nvml = pynvml
        self.index = index
        self.own_bytes = 0
        # The device's use before this worker made anything on it: where NVML cannot list
        # this process (a container without the host's PID namespace), what the device
        # gained since stands in for the worker's own use.
        self._used_at_open = int(pynvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def own_use_fix(self) -> int:
        """Takes what this process holds on the GPU now as the worker's own fixed use, off the
        capacity it offers from now on: called once the worker has primed CUDA (its context
        and its first threads' cuBLAS workspaces: about 0.7 GiB on the H200), which no
        model's measure counts. Where NVML does not list the process, the device's growth
        since it was opened stands in (which also counts a neighbour's growth meanwhile).
        Returns it."""
        mine = self.process_used_bytes()
        if mine is None:
            mine = int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used) - self._used_at_open
        self.own_bytes = max(mine, 0)
        return self.own_bytes

    def process_used_bytes(self) -> int | None:
        return nvml_process_used(self._nvml, self._handle, os.getpid())

    def own_use_add(self, grown: int) -> None:
        self.own_bytes += max(grown, 0)

    def state(self) -> DeviceState:
        nvml = self._nvml
        memory = nvml.nvmlDeviceGetMemoryInfo(self._handle)
        name = nvml.nvmlDeviceGetName(self._handle)
        uuid = nvml.nvmlDeviceGetUUID(self._handle)
        try:
            utilisation: float | None = float(nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
        except nvml.NVMLError:
            utilisation = None
        offered = min(self._budget, int(memory.total)) if self._budget else int(memory.total)
        return DeviceState(
            kind="cuda",
            index=self.index,
            name=name.decode() if isinstance(name, bytes) else str(name),
            uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
            # The capacity this worker offers models: the device's memory, or its share when
            # several workers share one GPU (a budget), less its own fixed use
            # (``own_use_fix``). Measured use stays the whole device's, as NVML reports it.
            total_bytes=max(offered - self.own_bytes, 0),
            used_bytes=int(memory.used),
            free_bytes=min(int(memory.free), offered),
            utilisation_pct=utilisation,
        )

    def close(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()


def nvml_process_used(nvml: Any, handle: Any, pid: int) -> int | None:
    """Process ``pid``'s memory on the GPU of ``handle`` per NVML, or None where NVML does not
    list it (no CUDA context yet, or a PID namespace NVML does not see into)."""
    try:
        processes = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except nvml.NVMLError:
        return None
    for process in processes:
        if process.pid == pid and process.usedGpuMemory is not None:
            return int(process.usedGpuMemory)
    return None


def gpu_count() -> int:
    """How many NVIDIA GPUs NVML sees; 0 when there is no driver or no GPU."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


def open_device(spec: str, *, memory_budget_bytes: int, gpu_budget_bytes: int = 0) -> Device:
    """Opens the device named ``cpu`` or ``cuda:N`` (a GPU offers ``gpu_budget_bytes`` of its
    memory when given, so that several workers can share it; else all of it).

    Raises:
        DeviceError: When the GPU cannot be reached through NVML.
    """
    if spec == "cpu":
        return CpuDevice(memory_budget_bytes=memory_budget_bytes)
    return NvmlDevice(index=int(spec.split(":", 1)[1]), budget_bytes=gpu_budget_bytes)
