import pytest

from inference_workers.devices import CpuDevice, DeviceError, gpu_count, open_device


def test_cpu_device_reports_its_budget_and_this_process_memory():
    device = open_device("cpu", memory_budget_bytes=8 * 1024**3)
    assert isinstance(device, CpuDevice)
    state = device.state()
    assert state.kind == "cpu"
    assert state.total_bytes == 8 * 1024**3
    assert 10 * 1024**2 < state.used_bytes < state.total_bytes
    assert state.free_bytes == state.total_bytes - state.used_bytes


def test_cpu_used_memory_follows_allocations():
    device = CpuDevice(memory_budget_bytes=16 * 1024**3)
    before = device.state().used_bytes
    block = bytearray(200 * 1024**2)
    for offset in range(0, len(block), 4096):  # touch every page so it is resident
        block[offset] = 1
    after = device.state().used_bytes
    assert after - before > 150 * 1024**2
    del block


def _fake_nvml(monkeypatch: pytest.MonkeyPatch, **calls: object) -> None:
    """Stands a pynvml in for the real one (no GPU here) with the device-memory ``calls`` a
    test needs, beside the init, shutdown and handle calls every NVML user makes."""
    import sys
    import types

    fake = types.SimpleNamespace(
        NVMLError=RuntimeError,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda index: ("handle", index),
        **calls,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)


def test_gpu_discovery_matches_opening_a_gpu():
    count = gpu_count()
    if count == 0:
        # No NVML here: opening a GPU must fail with a clear error, not crash.
        with pytest.raises(DeviceError, match="cuda:0"):
            open_device("cuda:0", memory_budget_bytes=1)
    else:
        state = open_device("cuda:0", memory_budget_bytes=1).state()
        assert state.kind == "cuda" and state.total_bytes > 0


def test_a_gpu_budget_lets_workers_share_one_device(monkeypatch):
    """Through the same NVML calls the real path makes (pynvml replaced: no GPU here)."""

    from inference_workers.devices import NvmlDevice

    class Memory:
        total, used, free = 80 * 1024**3, 30 * 1024**3, 50 * 1024**3

    class Busy:
        gpu = 37

    _fake_nvml(
        monkeypatch,
        nvmlDeviceGetMemoryInfo=lambda handle: Memory,
        nvmlDeviceGetName=lambda handle: b"NVIDIA H200",
        nvmlDeviceGetUUID=lambda handle: b"GPU-1234",
        nvmlDeviceGetUtilizationRates=lambda handle: Busy,
    )
    whole = NvmlDevice(index=0).state()
    assert (whole.total_bytes, whole.used_bytes, whole.free_bytes) == (80 * 1024**3, 30 * 1024**3, 50 * 1024**3)
    half = open_device("cuda:0", memory_budget_bytes=1, gpu_budget_bytes=40 * 1024**3).state()
    assert half.total_bytes == 40 * 1024**3 and half.used_bytes == 30 * 1024**3  # use is the device's
    assert half.free_bytes == 40 * 1024**3 and half.utilisation_pct == 37.0 and half.name == "NVIDIA H200"


def test_the_gpu_meter_counts_this_process_not_its_neighbours(monkeypatch):
    """NVML's figure for this process is the footprint; another process's growth on the same
    device meanwhile is not (pynvml replaced: no GPU here; the H200 run is in bench/README.md)."""
    import os
    import types

    from inference_workers.runtimes.gpu import gpu_meter

    MiB = 1024**2
    readings = {"mine": 700 * MiB, "device": 10_000 * MiB}

    def running(handle):
        me = types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=readings["mine"])
        other = types.SimpleNamespace(pid=os.getpid() + 1, usedGpuMemory=4_000 * MiB)
        return [other, me] if readings.get("listed", True) else [other]

    _fake_nvml(
        monkeypatch,
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(used=readings["device"]),
        nvmlDeviceGetComputeRunningProcesses=running,
    )
    with gpu_meter(0) as measured:
        readings["mine"] += 268 * MiB  # the model
        readings["device"] += 268 * MiB + 3_000 * MiB  # and a neighbour's load at the same time
    assert measured == [268 * MiB]

    readings["listed"] = False  # NVML cannot see this process (a PID namespace): the device's growth
    with gpu_meter(0) as measured:
        readings["device"] += 512 * MiB
    assert measured == [512 * MiB]

    with gpu_meter(0) as measured:  # no CUDA context before the load, one after: the device's growth
        readings["listed"] = True
        readings["device"] += 300 * MiB
    assert measured == [300 * MiB]


def test_the_gpu_meter_leaves_torch_alone_until_cuda_is_initialised(monkeypatch):
    """The H200 run's failure: CUDA available but not yet initialised in the worker, and
    torch's allocator statistics asked for anyway ("Invalid device argument")."""
    import types

    import torch

    from inference_workers.runtimes.gpu import gpu_meter

    def uninitialised(*args, **kwargs):
        raise RuntimeError("Invalid device argument 0: did you call init?")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    for name in ("reset_peak_memory_stats", "memory_allocated", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, uninitialised)
    used = {"device": 1000}
    _fake_nvml(
        monkeypatch,
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(used=used["device"]),
        nvmlDeviceGetComputeRunningProcesses=lambda handle: [],
    )
    with gpu_meter(0) as measured:
        used["device"] += 64
    assert measured == [64]
