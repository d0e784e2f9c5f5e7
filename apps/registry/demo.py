"""The demo model ``make run`` seeds: a small ONNX MLP built with onnx.helper (no torch)."""

from __future__ import annotations

import hashlib

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from apps.registry.storage import HashedUpload


def demo_model_bytes() -> bytes:
    """FP32 [batch, 4] → 16 → 3 (ReLU between), fixed weights: a stand-in classifier."""
    rng = np.random.default_rng(7)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 16)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(np.zeros(16, dtype=np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 3)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w1"], ["h"]),
            helper.make_node("Add", ["h", "b1"], ["hb"]),
            helper.make_node("Relu", ["hb"], ["a"]),
            helper.make_node("MatMul", ["a", "w2"], ["output"]),
        ],
        "demo",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
        initializer=[w1, b1, w2],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def upload_from_bytes(name: str, payload: bytes) -> HashedUpload:
    """An upload object for bytes already in hand (the seed), as the upload handler makes."""
    upload = HashedUpload(name, "application/octet-stream", len(payload), None)
    upload.write(payload)
    upload.seek(0)
    upload.sha256 = hashlib.sha256(payload).hexdigest()
    return upload
