"""ONNX models built with onnx.helper (no torch): tiny, sized, and hostile ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def mlp_bytes(*, width: int = 16, inputs: int = 4, outputs: int = 2, seed: int = 0) -> bytes:
    """A two-layer MLP FP32 [batch, inputs] → width → outputs; its weights set its size."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((inputs, width)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((width, outputs)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["a"]),
            helper.make_node("MatMul", ["a", "w2"], ["output"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", inputs])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", outputs])],
        initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def sized_mlp_bytes(megabytes: int) -> bytes:
    """An MLP of about ``megabytes`` MB of FP32 weights (input 256, a square hidden layer)."""
    width = int((megabytes * 1024**2 / 4) ** 0.5)
    rng = np.random.default_rng(1)
    w1 = numpy_helper.from_array(rng.standard_normal((256, width)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w1"], ["h"]),
            helper.make_node("MatMul", ["h", "w2"], ["output"]),
        ],
        "sized",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width])],
        initializer=[w1, w2],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def escaping_external_data_bytes(location: str = "../../secret.bin") -> bytes:
    """An ONNX model whose weight claims to live in a file outside the model's folder."""
    weight = TensorProto()
    weight.name = "w"
    weight.data_type = TensorProto.FLOAT
    weight.dims.extend([4, 2])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "32")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["output"])],
        "external",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2])],
        initializer=[weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def write(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


__all__ = ["escaping_external_data_bytes", "mlp_bytes", "onnx", "sized_mlp_bytes", "write"]
