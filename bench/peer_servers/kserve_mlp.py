"""The reference MLP in KServe's Python model server (``kserve.ModelServer``, one uvicorn
worker, no gRPC), as a KServe user would write it:

    python kserve_mlp.py MODEL.onnx HTTP_PORT

Tuned as Berth's web process is: no per-request log lines (KServe's defaults write four per
request: uvicorn's access line and three latency traces). KServe binds its HTTP server to
0.0.0.0 with no option to change it; benchmarks here bind 127.0.0.1 only, so the server's
``uvicorn.Config`` is given that host (and no access log)."""

from __future__ import annotations

import sys
import uuid
from typing import Any

import onnxruntime as ort
import uvicorn
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.protocol.rest import server as rest_server


class OnnxMlp(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.ready = True

    async def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None, response_headers: Any = None
    ) -> InferResponse:
        batch = payload.inputs[0].as_numpy()
        (output,) = self.session.run(None, {self.input_name: batch})
        result = InferOutput(name="output", shape=list(output.shape), datatype="FP32")
        result.set_data_from_numpy(output, binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[result], response_id=payload.id or uuid.uuid4().hex)


class _Loopback(uvicorn.Config):
    def __init__(self, app: Any, **options: Any) -> None:
        super().__init__(app, **{**options, "host": "127.0.0.1", "access_log": False})


if __name__ == "__main__":
    artifact, port = sys.argv[1], int(sys.argv[2])
    rest_server.uvicorn.Config = _Loopback
    server = ModelServer(http_port=port, enable_grpc=False, workers=1, enable_latency_logging=False)
    server.start([OnnxMlp("mlp", artifact)])
