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

import onnxruntime as ort
import uvicorn
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.protocol.rest import server as rest_server


def _options() -> ort.SessionOptions:
    """Berth's worker's session options (docs/workers.md, "Threads"): one intra-op thread
    and no spin-waiting, which on a few shared cores leaves them to the server's other work."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


class OnnxMlp(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.session = ort.InferenceSession(path, _options(), providers=["CPUExecutionProvider"])
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
