"""ONNX Runtime: the CUDA execution provider on a GPU (with a memory cap), else the CPU."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from inference_workers.datatypes import ONNX_TYPES
from inference_workers.runtimes.base import (
    ModelExecutionError,
    RuntimeLoadError,
    RuntimeOptions,
    Signature,
    batched_signature,
)
from inference_workers.types import TensorSpec

_STATE = ort.capi.onnxruntime_pybind11_state
# ONNX Runtime raises one exception type per status code, none sharing a useful base.
ORT_ERRORS: tuple[type[BaseException], ...] = (
    *(
        getattr(_STATE, name)
        for name in (
            "Fail",
            "InvalidArgument",
            "NoSuchFile",
            "NoModel",
            "EngineError",
            "RuntimeException",
            "InvalidProtobuf",
            "ModelLoaded",
            "NotImplemented",
            "InvalidGraph",
            "EPFail",
            "ModelLoadCanceled",
            "ModelRequiresCompilation",
            "NotFound",
        )
        if hasattr(_STATE, name)
    ),
    RuntimeError,
)


def _spec(node: Any) -> TensorSpec:
    datatype = ONNX_TYPES.get(node.type)
    if datatype is None:
        raise RuntimeLoadError(f"tensor '{node.name}' has type {node.type}, which Berth cannot serve")
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in (node.shape or ()))
    return TensorSpec(name=node.name, datatype=datatype, shape=shape)


class OnnxRunner:
    """One ONNX Runtime session."""

    platform = "onnxruntime_onnx"

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = options.inter_op_threads
        if options.inter_op_threads > 1:  # independent branches run at once only in parallel mode
            session_options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        if not options.spin_wait:
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session_options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        session_options.log_severity_level = 3
        providers: list[Any] = ["CPUExecutionProvider"]
        if options.cuda_index is not None:
            cuda: dict[str, Any] = {"device_id": options.cuda_index, "arena_extend_strategy": "kSameAsRequested"}
            if options.gpu_mem_limit_bytes:
                cuda["gpu_mem_limit"] = options.gpu_mem_limit_bytes
            providers = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
        try:
            self._session = ort.InferenceSession(str(path), sess_options=session_options, providers=providers)
        except ORT_ERRORS as exc:
            raise RuntimeLoadError(f"ONNX Runtime cannot load this model: {exc}") from exc
        if options.cuda_index is not None and "CUDAExecutionProvider" not in self._session.get_providers():
            raise RuntimeLoadError("the CUDA execution provider is not available here; check the CUDA/cuDNN install")
        self.providers = tuple(self._session.get_providers())
        inputs = tuple(_spec(node) for node in self._session.get_inputs())
        outputs = tuple(_spec(node) for node in self._session.get_outputs())
        self.signature: Signature = batched_signature(inputs, outputs)
        self._output_names = [spec.name for spec in outputs]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the session; ONNX Runtime errors become ``ModelExecutionError``."""
        try:
            results = self._session.run(self._output_names, dict(inputs))
        except ORT_ERRORS as exc:
            raise ModelExecutionError(f"ONNX Runtime failed: {exc}") from exc
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        """Drops the session; its memory is freed with it."""
        self.__dict__.pop("_session", None)
