"""The reference MLP as an MLServer custom runtime (MLServer has no ONNX runtime of its own):
the input decoded by MLServer's NumPy codec, one ``InferenceSession.run``, the output
encoded back, as an MLServer user would write it, with Berth's worker's session options.
``bench/peers.py`` copies this file into the model folder MLServer loads it from."""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


def _options() -> ort.SessionOptions:
    """Berth's worker's session options (docs/workers.md, "Threads"): one intra-op thread
    and no spin-waiting, which on a few shared cores leaves them to the server's other work."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


class OnnxMlp(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self._settings)
        self.session = ort.InferenceSession(path, _options(), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        batch = NumpyCodec.decode_input(payload.inputs[0])
        (output,) = self.session.run(None, {self.input_name: batch})
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("output", output)])
