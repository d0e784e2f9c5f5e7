from collections.abc import Callable

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


def _fake_h200(monkeypatch: pytest.MonkeyPatch, used: Callable[[], int], listed: Callable[[], list]) -> None:
    """An 80 GiB H200 through the fake pynvml: ``used`` says the device's used memory now,
    ``listed`` the processes NVML lists on it (objects with ``pid`` and ``usedGpuMemory``)."""
    import types

    total = 80 * 1024**3
    _fake_nvml(
        monkeypatch,
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(total=total, used=used(), free=total - used()),
        nvmlDeviceGetName=lambda handle: b"NVIDIA H200",
        nvmlDeviceGetUUID=lambda handle: b"GPU-1234",
        nvmlDeviceGetUtilizationRates=lambda handle: types.SimpleNamespace(gpu=0),
        nvmlDeviceGetComputeRunningProcesses=lambda handle: listed(),
    )


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


def test_a_gpu_workers_own_use_is_off_what_it_offers_and_only_its_own_use_is_checked(
    monkeypatch, loop_thread, tmp_path, model_files, caplog
):
    """A CUDA worker's context and primed cuBLAS workspaces (about 0.9 GiB on the H200) are
    its own: taken off the capacity it offers once primed, so models packed to that capacity
    fit beside them. After a load it checks what its own process holds against that, not the
    whole device's use, which on a shared GPU holds the other workers' memory too."""
    import logging
    import os
    import types

    from inference_workers.artifacts import ArtifactCache
    from inference_workers.devices import NvmlDevice
    from inference_workers.errors import LoadError
    from inference_workers.host import ModelHost
    from inference_workers.runtimes import RuntimeOptions
    from tests.inference_workers.conftest import load_command

    MiB, GiB = 1024**2, 1024**3
    held = {"mine": 0, "neighbour": 30 * GiB}

    def running(handle):
        listed = [types.SimpleNamespace(pid=os.getpid() + 1, usedGpuMemory=held["neighbour"])]
        if held["mine"]:
            listed.append(types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=held["mine"]))
        return listed

    _fake_h200(monkeypatch, used=lambda: held["mine"] + held["neighbour"], listed=lambda: running(None))
    device = NvmlDevice(index=0, budget_bytes=2 * GiB)  # half of a GPU shared by two workers: 2 GiB here
    host = ModelHost(
        device=device,
        options=RuntimeOptions(device="cpu", intra_op_threads=1),
        cache=ArtifactCache(tmp_path / "cache"),
        loop=loop_thread,
        headroom_bytes=100 * MiB,
    )
    try:
        assert device.own_use_fix() == 0  # not primed: NVML does not list the process yet
        assert host.capacity_bytes == 2 * GiB
        held["mine"] = 900 * MiB  # primed: the CUDA context and the loading threads' cuBLAS
        assert device.own_use_fix() == 900 * MiB
        host.capacity_recount()
        assert device.state().total_bytes == host.capacity_bytes == 2 * GiB - 900 * MiB
        assert host.allocatable_bytes == 2 * GiB - 1000 * MiB
        # A model that would have fit the budget before its own use was counted does not now.
        with pytest.raises(LoadError, match="free"):
            host.load(load_command(model_files["mlp"], model="big", reservation=1100 * MiB))
        with caplog.at_level(logging.WARNING, logger="inference_workers.host"):
            host.load(load_command(model_files["mlp"], model="small", reservation=8 * MiB))
            # The neighbour's 30 GiB are on the device, not this worker's: no over-commit.
            assert "over-committed" not in caplog.text
            held["mine"] += 1100 * MiB  # this worker holds past its own use plus what it offers
            host.load(load_command(model_files["mlp"], model="other", reservation=8 * MiB))
        assert "this worker holding 2097152000 bytes, over 2042626048" in caplog.text
        assert "over-committed" in caplog.text
    finally:
        host.close()


def test_a_cuda_worker_takes_its_own_use_off_its_capacity_once_primed(monkeypatch, tmp_path):
    """The worker's start, on a GPU (NVML replaced: no GPU here; priming stands in by what
    it leaves on the device): its heartbeat offers its budget less what it holds itself."""
    import os
    import types

    from celery import Celery

    from inference_workers import control
    from inference_workers.settings import WorkerSettings

    MiB, GiB = 1024**2, 1024**3
    held = {"mine": 0}
    _fake_h200(
        monkeypatch,
        used=lambda: held["mine"],
        listed=lambda: [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=held["mine"])] if held["mine"] else [],
    )
    primed = []

    def prime(model_format, options):
        primed.append(options.device)
        held["mine"] = 900 * MiB  # the CUDA context and this thread's cuBLAS workspace

    monkeypatch.setattr(control, "prime_runtime", prime)
    settings = WorkerSettings.from_env(
        {
            "BERTH_WORKER_DEVICE": "cuda:0",
            "BERTH_WORKER_GPU_MEMORY_BUDGET": "4GiB",
            "BERTH_WORKER_DATA_DIR": str(tmp_path),
            "BERTH_WORKER_HEARTBEAT_S": "60",
            "BERTH_WORKER_HANDOVER_S": "0",
            "BERTH_WORKER_DRAIN_S": "0",
            "BERTH_WORKER_TOKEN": "t" * 32,
        }
    )
    runtime = control.WorkerRuntime(settings, Celery(broker="memory://"))
    runtime.start()
    try:
        assert primed == ["cuda:0"]
        assert runtime.host is not None and runtime.host.capacity_bytes == 4 * GiB - 900 * MiB
        assert runtime.heartbeat().device.total_bytes == 4 * GiB - 900 * MiB
    finally:
        runtime.stop()


def test_each_loading_threads_cuda_handles_are_the_workers_own_use(monkeypatch, loop_thread, tmp_path, model_files):
    """cuBLAS makes a handle and workspace per thread (about 95 MiB on the H200) on its first
    matrix product: a loading thread primes its own (and the model's runtime) before its
    first load's room is counted, outside the model's measure; what that took is the
    worker's own use, off what it offers models. A prime that fails is a failed load with
    its reason (NVML and torch's CUDA replaced: no GPU here)."""
    import os
    import threading
    import types
    from dataclasses import replace

    import torch

    from inference_workers import host as host_module
    from inference_workers.artifacts import ArtifactCache
    from inference_workers.devices import NvmlDevice
    from inference_workers.errors import InsufficientMemoryError, LoadError
    from inference_workers.host import ModelHost
    from inference_workers.runtimes import RuntimeOptions, base, gpu
    from tests.inference_workers.conftest import load_command

    MiB, GiB = 1024**2, 1024**3
    held = {"mine": 700 * MiB}
    _fake_h200(
        monkeypatch,
        used=lambda: held["mine"],
        listed=lambda: [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=held["mine"])],
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(base, "_PRIMED", set())  # the runtimes primed: none, and put back after
    monkeypatch.setattr(gpu._THREAD, "primed", set(), raising=False)  # this thread's, put back after
    primed_threads = []
    broken = {"cuda": False}

    def prime(index):
        if broken["cuda"]:
            raise RuntimeError("CUDA error: out of memory")
        if index in getattr(gpu._THREAD, "primed", set()):
            return
        primed_threads.append(threading.current_thread().name)
        gpu._THREAD.primed = {index}
        held["mine"] += 95 * MiB

    monkeypatch.setattr(gpu, "prime_cuda", prime)
    real = host_module.measure_footprint
    monkeypatch.setattr(
        host_module,
        "measure_footprint",
        lambda path, model_format, options, **kwargs: real(
            path, model_format, replace(options, device="cpu"), **kwargs
        ),
    )
    device = NvmlDevice(index=0, budget_bytes=4 * GiB)
    device.own_use_fix()  # the worker's start: its context
    host = ModelHost(
        device=device,
        options=RuntimeOptions(device="cuda:0", intra_op_threads=1),
        cache=ArtifactCache(tmp_path / "cache"),
        loop=loop_thread,
    )
    try:
        assert host.capacity_bytes == 4 * GiB - 700 * MiB
        # Fits what is offered before this thread's handles are counted, not after: refused,
        # not let in to over-commit the device.
        with pytest.raises(InsufficientMemoryError):
            host.load(load_command(model_files["mlp"], model="big", reservation=host.allocatable_bytes - 50 * MiB))
        assert primed_threads == ["MainThread"]
        assert device.own_bytes == 795 * MiB and host.capacity_bytes == 4 * GiB - 795 * MiB
        host.load(load_command(model_files["mlp"], model="first", reservation=8 * MiB))
        host.load(load_command(model_files["mlp"], model="second", reservation=8 * MiB))
        assert primed_threads == ["MainThread"]  # once per thread
        other = threading.Thread(
            target=lambda: host.load(load_command(model_files["mlp"], model="third", reservation=8 * MiB)),
            name="loader",
        )
        other.start()
        other.join()
        assert primed_threads == ["MainThread", "loader"]
        assert device.own_bytes == 890 * MiB and host.capacity_bytes == 4 * GiB - 890 * MiB
        # A thread whose prime fails: a failed load with the reason, reported like any other.
        broken["cuda"] = True
        failing = {}

        def load_failing() -> None:
            try:
                host.load(load_command(model_files["mlp"], model="fourth", reservation=8 * MiB))
            except LoadError as error:
                failing["error"] = str(error)

        third = threading.Thread(target=load_failing, name="loader-2")
        third.start()
        third.join()
        assert failing["error"] == "could not prepare cuda:0 for the load: CUDA error: out of memory"
        assert sorted((state.key.model, state.state) for state in host.states()) == [
            ("big", "failed"),
            ("first", "ready"),
            ("fourth", "failed"),
            ("second", "ready"),
            ("third", "ready"),
        ]
    finally:
        host.close()


def test_where_nvml_cannot_list_the_worker_its_own_use_is_what_the_device_gained(monkeypatch):
    """In a container without the host's PID namespace NVML lists no process of the worker's:
    what the device gained since the worker opened it stands in for the worker's own use."""

    from inference_workers.devices import NvmlDevice

    MiB, GiB = 1024**2, 1024**3
    used = {"device": 5 * GiB}  # a neighbour's, before this worker made anything
    _fake_h200(monkeypatch, used=lambda: used["device"], listed=list)
    device = NvmlDevice(index=0, budget_bytes=40 * GiB)
    used["device"] += 700 * MiB  # the worker primes CUDA
    assert device.process_used_bytes() is None
    assert device.own_use_fix() == 700 * MiB
    assert device.state().total_bytes == 40 * GiB - 700 * MiB
