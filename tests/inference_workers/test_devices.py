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


def test_gpu_discovery_matches_opening_a_gpu():
    count = gpu_count()
    if count == 0:
        # No NVML here: opening a GPU must fail with a clear error, not crash.
        with pytest.raises(DeviceError, match="cuda:0"):
            open_device("cuda:0", memory_budget_bytes=1)
    else:
        state = open_device("cuda:0", memory_budget_bytes=1).state()
        assert state.kind == "cuda" and state.total_bytes > 0
