"""The reference MLP in KServe's Python model server (``kserve.ModelServer``, one uvicorn
worker, no gRPC), as a KServe user would write it:

    python kserve_mlp.py MODEL.onnx HTTP_PORT

Tuned as Berth is: Berth's worker's session options, and no log line per request (KServe's
defaults write four: uvicorn's access line, the model's latency line and two of its timing
middleware; ``bench/peers.py`` sets ``KSERVE_LOGLEVEL=WARNING`` for the middleware's).
KServe binds its HTTP server to 0.0.0.0 with no option to change it; benchmarks here bind
127.0.0.1 only, so the server's ``uvicorn.Config`` is given that host (and no access log)."""

from __future__ import annotations

import sys
import uuid
from typing import Any

import uvicorn
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.protocol.rest import server as rest_server
from mlp_session import mlp_session


class OnnxMlp(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.session = mlp_session(path)
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
