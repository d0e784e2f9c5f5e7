"""The reference MLP as an MLServer custom runtime (MLServer has no ONNX runtime of its own):
the input decoded by MLServer's NumPy codec, one ``InferenceSession.run``, the output
encoded back, as an MLServer user would write it, with Berth's worker's session options.
``bench/peers.py`` copies this file and ``mlp_session.py`` into the model folder MLServer
loads it from."""

from __future__ import annotations

from mlp_session import mlp_session
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxMlp(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self._settings)
        self.session = mlp_session(path)
        self.input_name = self.session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        batch = NumpyCodec.decode_input(payload.inputs[0])
        (output,) = self.session.run(None, {self.input_name: batch})
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("output", output)])
