"""The floor for one Python HTTP hop: a minimal aiohttp v2 server around one ORT session.

Run as a process by bench/worker.py: ``python -m bench.bare_server MODEL PORT [THREADS SPIN]``.
With THREADS and SPIN the session is made as the worker makes its own (``intra_op_num_threads``
THREADS, idle threads spinning only when SPIN is 1), so the worker's default configuration
can be held against a floor around the same session; without them ONNX Runtime's defaults.
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import orjson
from aiohttp import web


def main() -> None:
    model, port = sys.argv[1], int(sys.argv[2])
    options = ort.SessionOptions()
    if len(sys.argv) > 3:
        options.intra_op_num_threads = int(sys.argv[3])
        if sys.argv[4] != "1":
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    async def infer(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        tensor = body["inputs"][0]
        array = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        (output,) = session.run(None, {input_name: array})
        payload = {
            "model_name": "mlp",
            "outputs": [{"name": "output", "datatype": "FP32", "shape": list(output.shape), "data": output.ravel()}],
        }
        return web.Response(
            body=orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), content_type="application/json"
        )

    app = web.Application()
    app.router.add_post("/v2/models/mlp/infer", infer)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
