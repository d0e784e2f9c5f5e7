"""Measuring GPU memory: NVML for the device, torch's allocator for its own peak."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from inference_workers.devices import nvml_process_used


@contextlib.contextmanager
def gpu_meter(index: int) -> Iterator[list[int]]:
    """Yields a list that receives the GPU memory the block took (bytes).

    The figure is the larger of NVML's growth for this process (which sees ONNX Runtime's
    CUDA arena and torch's cached blocks) and torch's peak allocation. Where NVML does not
    list this process both before and after, the device's used-memory growth stands in for
    it; that one also counts what other processes on the device took meanwhile.
    """
    import pynvml
    import torch

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    pid = os.getpid()
    before_process = nvml_process_used(pynvml, handle, pid)
    before_device = int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    # torch's allocator statistics exist once CUDA is initialised in this process (asking
    # before raises "Invalid device argument"); prime_cuda does it before any load.
    torch_ready = torch.cuda.is_available() and torch.cuda.is_initialized()
    if torch_ready:
        torch.cuda.reset_peak_memory_stats(index)
        torch_before = torch.cuda.memory_allocated(index)
    result: list[int] = []
    try:
        yield result
    finally:
        after_process = nvml_process_used(pynvml, handle, pid)
        if before_process is not None and after_process is not None:
            nvml_growth = after_process - before_process
        else:
            nvml_growth = int(pynvml.nvmlDeviceGetMemoryInfo(handle).used) - before_device
        torch_peak = torch.cuda.max_memory_allocated(index) - torch_before if torch_ready else 0
        result.append(max(nvml_growth, torch_peak, 0))
        pynvml.nvmlShutdown()


_THREAD = threading.local()


def primed_here(index: int) -> bool:
    """Whether this thread has primed ``cuda:index`` already, or has nothing to prime there
    (torch sees no CUDA)."""
    import torch

    return index in getattr(_THREAD, "primed", set()) or not torch.cuda.is_available()


def prime_cuda(index: int) -> None:
    """Creates this process's CUDA context (hundreds of MiB) and this thread's cuBLAS handle
    and workspace on ``cuda:index``, once per thread, so that neither is charged to the
    model a thread loads first: cuBLAS keeps a handle and workspace per thread (about 95 MiB
    on the H200), made by the thread's first matrix product. They are the worker's own use
    (off the capacity it offers; docs/workers.md, "Memory accounting").
    Without CUDA in torch it does nothing (ONNX Runtime's CUDA provider brings its own
    context, primed by its session)."""
    import torch

    if primed_here(index):
        return
    torch.cuda.init()
    with torch.inference_mode():
        probe = torch.ones(8, 8, device=f"cuda:{index}")
        (probe @ probe).sum().item()
    torch.cuda.synchronize(index)
    _THREAD.primed = getattr(_THREAD, "primed", set()) | {index}
