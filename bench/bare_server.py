"""The floor for one Python HTTP hop: a minimal aiohttp v2 server around one ORT session.

Run as a process by bench/worker.py: ``python -m bench.bare_server MODEL PORT``.
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import orjson
from aiohttp import web


def main() -> None:
    model, port = sys.argv[1], int(sys.argv[2])
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
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
