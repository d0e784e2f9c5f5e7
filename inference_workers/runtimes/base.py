"""The runtime interface, sample inputs, and footprint measurement."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import psutil

from inference_workers.datatypes import NUMPY_DTYPES
from inference_workers.errors import WorkerError
from inference_workers.types import ModelFormat, TensorSpec


class RuntimeLoadError(WorkerError):
    """The artifact cannot be loaded or run as the format it claims to be."""


class ModelExecutionError(WorkerError):
    """The model raised, or returned something that does not match its signature."""


@dataclass(frozen=True)
class Signature:
    """A model's inputs and outputs; ``batched`` when dimension 0 of each is the batch."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batched: bool


@dataclass(frozen=True)
class RuntimeOptions:
    """Where and how to run: ``cpu`` or ``cuda:N``, thread counts, a GPU memory cap."""

    device: str = "cpu"
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    gpu_mem_limit_bytes: int = 0
    # Idle intra-op threads spin-wait for the next run (ONNX Runtime's default). That
    # shaves microseconds off back-to-back runs of one model but burns whole cores the
    # data plane, the other models and a gateway on the same host need; off by default.
    spin_wait: bool = False

    @property
    def cuda_index(self) -> int | None:
        """The GPU index, or None on the CPU."""
        return int(self.device.split(":", 1)[1]) if self.device.startswith("cuda:") else None


class Runner(Protocol):
    """A loaded model: its signature, and ``run`` on numpy arrays keyed by input name."""

    signature: Signature
    platform: str

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs one (possibly batched) inference."""
        ...

    def close(self) -> None:
        """Releases the model's memory."""
        ...


def batched_signature(inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> Signature:
    """A signature whose ``batched`` flag says whether every tensor's dim 0 is variable."""
    tensors = inputs + outputs
    batched = bool(inputs) and all(spec.shape and spec.shape[0] == -1 for spec in tensors)
    return Signature(inputs=inputs, outputs=outputs, batched=batched)


def open_runner(
    path: Path,
    model_format: ModelFormat,
    options: RuntimeOptions,
    *,
    inputs: tuple[TensorSpec, ...] = (),
    outputs: tuple[TensorSpec, ...] = (),
) -> Runner:
    """Opens an artifact with the runtime for its format.

    Args:
        path: The artifact file.
        model_format: ``onnx``, ``torchscript`` or ``torch_export``.
        options: Device and threads.
        inputs: The signature's inputs; required for TorchScript, whose files lack one.
        outputs: The signature's outputs (TorchScript).

    Raises:
        RuntimeLoadError: With a reason a person can act on.
    """
    if model_format == "onnx":
        from inference_workers.runtimes.onnx import OnnxRunner

        return OnnxRunner(path, options)
    from inference_workers.runtimes.pytorch import TorchRunner

    return TorchRunner(path, model_format, options, inputs=inputs, outputs=outputs)


def sample_inputs(signature: Signature, *, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Generated inputs matching the signature; variable dims are ``batch`` (dim 0) or 1."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        shape = tuple(
            (batch if (position == 0 and signature.batched) else 1) if dim == -1 else dim
            for position, dim in enumerate(spec.shape)
        )
        dtype = NUMPY_DTYPES[spec.datatype]
        if spec.datatype == "BYTES":
            arrays[spec.name] = np.full(shape, b"x", dtype=object)
        elif spec.datatype == "BOOL":
            arrays[spec.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif dtype.kind in "iu":
            arrays[spec.name] = rng.integers(0, 2, size=shape).astype(dtype)
        else:
            arrays[spec.name] = rng.standard_normal(size=shape).astype(dtype)
    return arrays


@dataclass(frozen=True)
class Footprint:
    """A model's measured memory: what loading it and running its largest batch took."""

    bytes: int
    device_kind: str
    load_seconds: float
    max_batch: int


def release_freed_memory(*, something_was_freed: bool = False) -> None:
    """Returns freed heap pages to the OS (glibc keeps them otherwise), so RSS tells the truth.

    It also leaves every object that survives a collection frozen (``gc.freeze``): the
    collector's oldest generation then skips the hundreds of thousands of objects that
    imports and loaded models make, and its passes, which otherwise stop every thread of
    the data plane for 40-120 ms a few times a minute under load, take a few milliseconds.

    The collection walks only what is not frozen yet (what was made since the last call),
    unless ``something_was_freed`` (a model was unloaded, or a failed load closed): then the
    heap is unfrozen first, so a full collection finds the cycles the freed model left among
    frozen objects. That full pass holds the interpreter for a quarter of a second or more in
    a process that imported torch, stopping every model's requests meanwhile; a load needs
    no such pass, and before and after its measure costs a few milliseconds instead.
    """
    if something_was_freed:
        gc.unfreeze()
    gc.collect()
    gc.freeze()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def _cpu_meter() -> Iterator[list[int]]:
    release_freed_memory()
    process = psutil.Process()
    before_rss = process.memory_info().rss
    before_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result: list[int] = []
    yield result
    after_rss = process.memory_info().rss
    after_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # The peak covers activations freed after the run; the RSS delta covers a process whose
    # earlier peak was higher than anything this load reached.
    result.append(max(after_rss - before_rss, after_peak - before_peak, 0))


def measure_footprint(
    path: Path,
    model_format: ModelFormat,
    options: RuntimeOptions,
    *,
    max_batch: int,
    inputs: tuple[TensorSpec, ...] = (),
    outputs: tuple[TensorSpec, ...] = (),
) -> tuple[Runner, Footprint]:
    """Loads the model, runs it at batch 1 and at ``max_batch``, and measures its memory.

    On the CPU the footprint is the resident-memory growth (peak and current, the larger);
    on a GPU it is the device memory the load and the largest batch took (torch's peak
    allocation, or NVML's used-memory growth for ONNX Runtime's CUDA provider).

    Returns:
        The open runner (warm) and its footprint.
    """
    prime_runtime(model_format, options)
    started = time.perf_counter()
    if options.cuda_index is None:
        with _cpu_meter() as measured:
            runner = open_runner(path, model_format, options, inputs=inputs, outputs=outputs)
            _warm_up(runner, max_batch)
        return runner, Footprint(measured[0], "cpu", time.perf_counter() - started, max_batch)
    from inference_workers.runtimes.gpu import gpu_meter, prime_cuda

    prime_cuda(options.cuda_index)  # this thread's cuBLAS handle, outside the measure
    with gpu_meter(options.cuda_index) as measured:
        runner = open_runner(path, model_format, options, inputs=inputs, outputs=outputs)
        _warm_up(runner, max_batch)
    return runner, Footprint(measured[0], "cuda", time.perf_counter() - started, max_batch)


def _warm_up(runner: Runner, max_batch: int) -> None:
    batches = [1, max_batch] if runner.signature.batched and max_batch > 1 else [1]
    run = checked(runner)
    for batch in batches:
        outputs = run(sample_inputs(runner.signature, batch=batch))
        check_outputs(runner.signature, outputs, rows=batch if runner.signature.batched else None)


def checked(runner: Runner) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    """``runner.run`` that refuses outputs whose rank or fixed dimensions break the signature."""
    specs = [(spec.name, spec.shape, spec.datatype, NUMPY_DTYPES[spec.datatype]) for spec in runner.signature.outputs]

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = runner.run(inputs)
        for name, shape, datatype, dtype in specs:
            array = outputs.get(name)
            if array is None:
                raise ModelExecutionError(f"the model did not return its output '{name}'")
            if array.dtype != dtype:
                # A wrong dtype would be encoded with the wrong byte size in binary replies.
                raise ModelExecutionError(f"output '{name}' is {array.dtype}; the model's signature says {datatype}")
            if array.ndim != len(shape) or any(w != -1 and g != w for g, w in zip(array.shape, shape, strict=True)):
                raise ModelExecutionError(
                    f"output '{name}' has shape {list(array.shape)}; the model's signature says {list(shape)}"
                )
        return outputs

    return run


def check_outputs(signature: Signature, outputs: Mapping[str, np.ndarray], *, rows: int | None) -> None:
    """Checks a run's outputs against the signature (names, and batch rows when batched).

    Raises:
        ModelExecutionError: Naming the output that is missing or has the wrong rows.
    """
    for spec in signature.outputs:
        if spec.name not in outputs:
            raise ModelExecutionError(f"the model did not return its output '{spec.name}'")
        array = outputs[spec.name]
        if rows is not None and (array.ndim == 0 or array.shape[0] != rows):
            got = array.shape[0] if array.ndim else "a scalar"
            raise ModelExecutionError(
                f"output '{spec.name}' has {got} rows for a batch of {rows}; the model must keep dimension 0"
            )


_PRIMED: set[tuple[str, str]] = set()


def _runtime_of(model_format: ModelFormat, options: RuntimeOptions) -> tuple[str, str]:
    """The runtime family a format runs on, and the device: what ``prime_runtime`` primes once."""
    return ("onnx" if model_format == "onnx" else "torch", options.device)


def runtime_primed(model_format: ModelFormat, options: RuntimeOptions) -> bool:
    """Whether ``prime_runtime`` has paid this format's runtime costs on this device."""
    return _runtime_of(model_format, options) in _PRIMED


def prime_runtime(model_format: ModelFormat, options: RuntimeOptions) -> None:
    """Pays a runtime's one-time costs (library init, thread pools, allocator arenas, on a
    GPU the CUDA context) once per process and device, with a tiny model, so a footprint
    measures the model and not the runtime."""
    runtime = _runtime_of(model_format, options)
    if runtime in _PRIMED:
        return
    family = runtime[0]
    if options.cuda_index is not None:
        from inference_workers.runtimes.gpu import prime_cuda

        prime_cuda(options.cuda_index)
    if family == "onnx":
        import onnxruntime as ort
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "prime",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.intra_op_threads
        if not options.spin_wait:
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list[Any] = ["CPUExecutionProvider"]
        if options.cuda_index is not None and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": options.cuda_index}))
        session = ort.InferenceSession(model.SerializeToString(), sess_options=session_options, providers=providers)
        session.run(None, {"x": np.ones((2, 4), dtype=np.float32)})
    else:
        import torch

        with torch.inference_mode():
            torch.nn.functional.relu(torch.ones(2, 4) @ torch.ones(4, 4))
    _PRIMED.add(runtime)  # only once it worked: a failed prime is tried again
    release_freed_memory()
