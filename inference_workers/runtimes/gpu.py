"""Measuring GPU memory: NVML for the device, torch's allocator for its own peak."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def gpu_meter(index: int) -> Iterator[list[int]]:
    """Yields a list that receives the GPU memory the block took (bytes).

    The figure is the larger of NVML's used-memory growth on the device (which sees ONNX
    Runtime's CUDA arena and every context) and torch's peak allocation.
    """
    import pynvml
    import torch

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    before = int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    torch_ready = torch.cuda.is_available()
    if torch_ready:
        torch.cuda.reset_peak_memory_stats(index)
        torch_before = torch.cuda.memory_allocated(index)
    result: list[int] = []
    try:
        yield result
    finally:
        after = int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        torch_peak = torch.cuda.max_memory_allocated(index) - torch_before if torch_ready else 0
        result.append(max(after - before, torch_peak, 0))
        pynvml.nvmlShutdown()
