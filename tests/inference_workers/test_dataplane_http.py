"""The worker's v2 surface over real HTTP: every route, JSON and binary, a stock client."""

from __future__ import annotations

import json
import struct

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from inference_workers.dataplane import DataPlane
from inference_workers.metrics import WorkerMetrics
from inference_workers.server import DataPlaneServer, build_app
from inference_workers.types import BatchingConfig, TensorSpec
from tests.inference_workers.conftest import load_command

TOKEN = "test-worker-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def worker(make_host, loop_thread, model_files, tmp_path):
    host = make_host()
    host.load(load_command(model_files["doubler"], model="doubler", version=1))
    host.load(load_command(model_files["doubler"], model="doubler", version=2))
    host.load(load_command(model_files["mlp"], model="mlp", batching=BatchingConfig(max_batch_size=4)))
    draining = {"value": False}
    metrics = WorkerMetrics()
    app = build_app(
        DataPlane(host, is_draining=lambda: draining["value"]),
        token=TOKEN,
        max_body_bytes=64 * 1024,
        metrics=host.metrics,
    )
    del metrics
    server = DataPlaneServer(app, host="127.0.0.1", port=0, loop=loop_thread)
    port = server.start()
    yield {"url": f"http://127.0.0.1:{port}", "port": port, "draining": draining, "host": host}
    server.stop()


def post(worker, path: str, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(worker["url"] + path, content=content, headers={**AUTH, **(headers or {})})


def doubler_request(data=(1, 2, 3, 4, 5, 6, 7, 8), shape=(2, 4), **extra):
    return {
        "id": "req-1",
        "inputs": [{"name": "input", "shape": list(shape), "datatype": "FP32", "data": list(data)}],
        **extra,
    }


# Server routes -------------------------------------------------------------------------


def test_server_routes(worker):
    assert httpx.get(worker["url"] + "/v2/health/live").status_code == 200
    assert httpx.get(worker["url"] + "/v2/health/ready").status_code == 200
    assert httpx.get(worker["url"] + "/v2").status_code == 401
    meta = httpx.get(worker["url"] + "/v2", headers=AUTH).json()
    assert meta["name"] == "berth-worker" and "binary_tensor_data" in meta["extensions"]
    worker["draining"]["value"] = True
    assert httpx.get(worker["url"] + "/v2/health/ready").status_code == 503


def test_model_metadata_and_readiness(worker):
    meta = httpx.get(worker["url"] + "/v2/models/acme.doubler", headers=AUTH).json()
    assert meta == {
        "name": "doubler",
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}],
    }
    assert httpx.get(worker["url"] + "/v2/models/acme.doubler/versions/1", headers=AUTH).status_code == 200
    assert httpx.get(worker["url"] + "/v2/models/acme.doubler/ready", headers=AUTH).status_code == 200
    assert httpx.get(worker["url"] + "/v2/models/acme.doubler/versions/2/ready", headers=AUTH).status_code == 200
    assert httpx.get(worker["url"] + "/v2/models/acme.doubler/versions/9", headers=AUTH).status_code == 404
    assert httpx.get(worker["url"] + "/v2/models/other.doubler", headers=AUTH).status_code == 404


def test_json_infer_echoes_id_and_version(worker):
    response = post(worker, "/v2/models/acme.doubler/versions/1/infer", doubler_request())
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == "req-1" and body["model_name"] == "doubler" and body["model_version"] == "1"
    assert body["outputs"] == [
        {"name": "output", "datatype": "FP32", "shape": [2, 4], "data": [2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0]}
    ]
    latest = post(worker, "/v2/models/acme.doubler/infer", doubler_request(data=[[1, 2, 3, 4], [5, 6, 7, 8]]))
    assert latest.json()["model_version"] == "2"  # nested data is accepted; no version = the latest


def test_binary_infer_in_and_out(worker):
    array = np.arange(8, dtype="<f4").reshape(2, 4)
    header = json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": array.nbytes}}
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    ).encode()
    response = post(
        worker,
        "/v2/models/acme.doubler/infer",
        header + array.tobytes(),
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200
    length = int(response.headers["Inference-Header-Content-Length"])
    meta = json.loads(response.content[:length])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 32
    out = np.frombuffer(response.content[length:], dtype="<f4").reshape(2, 4)
    assert np.array_equal(out, array * 2)


def test_binary_data_output_applies_where_an_output_does_not_say_otherwise(worker):
    path = "/v2/models/acme.doubler/infer"
    everything = post(worker, path, doubler_request(parameters={"binary_data_output": True}))
    length = int(everything.headers["Inference-Header-Content-Length"])
    assert json.loads(everything.content[:length])["outputs"][0]["parameters"]["binary_data_size"] == 32
    named = post(worker, path, doubler_request(parameters={"binary_data_output": True}, outputs=[{"name": "output"}]))
    assert "Inference-Header-Content-Length" in named.headers  # no word of its own: the request's
    own_word = post(
        worker,
        path,
        doubler_request(
            parameters={"binary_data_output": True},
            outputs=[{"name": "output", "parameters": {"binary_data": False}}],
        ),
    )
    assert "Inference-Header-Content-Length" not in own_word.headers  # the output's own word wins
    assert own_word.json()["outputs"][0]["data"] == [2, 4, 6, 8, 10, 12, 14, 16]


def test_a_stock_v2_client_works_unchanged(worker):
    client = triton.InferenceServerClient(url=f"127.0.0.1:{worker['port']}")
    assert client.is_server_live()
    assert client.is_model_ready("acme.doubler", headers=dict(AUTH))
    metadata = client.get_model_metadata("acme.doubler", headers=dict(AUTH))
    assert metadata["inputs"][0]["shape"] == [-1, 4]
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    for binary in (False, True):
        tensor = triton.InferInput("input", [3, 4], "FP32")
        tensor.set_data_from_numpy(data, binary_data=binary)
        wanted = triton.InferRequestedOutput("output", binary_data=binary)
        result = client.infer(
            "acme.doubler", [tensor], outputs=[wanted], headers=dict(AUTH), request_id="r7"
        )  # it adds headers to the dict it is given
        assert np.array_equal(result.as_numpy("output"), data * 2)
        assert result.get_response()["id"] == "r7"
    client.close()


# Refusals ------------------------------------------------------------------------------


def test_model_routes_need_the_worker_token(worker):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = httpx.post(worker["url"] + "/v2/models/acme.doubler/infer", json=doubler_request(), headers=headers)
        assert response.status_code == 401
        assert "worker token" in response.json()["error"]
    assert httpx.get(worker["url"] + "/v2/models/acme.doubler").status_code == 401
    client = triton.InferenceServerClient(url=f"127.0.0.1:{worker['port']}")
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("acme.doubler")
    client.close()


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"{not json", "not valid JSON"),
        ({"inputs": []}, "non-empty 'inputs'"),
        (doubler_request(shape=(2, 5)), "dimension 1 is 5"),
        (doubler_request(shape=(8,)), "1 dimensions"),
        (doubler_request(data=[1, 2, 3]), "3 elements given"),
        ({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}]}, "datatype INT64"),
        ({"inputs": [{"name": "nope", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}, "'nope'"),
        (
            {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ["a", "b", "c", "d"]}]},
            "FP32 data must be numbers",
        ),
        ({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32"}]}, "neither 'data'"),
        (doubler_request(outputs=[{"name": "missing"}]), "missing"),
    ],
)
def test_bad_requests_are_400_naming_the_problem(worker, body, complaint):
    response = post(worker, "/v2/models/acme.doubler/infer", body)
    assert response.status_code == 400
    assert complaint in response.json()["error"]


def test_missing_input_is_named(worker):
    response = post(
        worker,
        "/v2/models/acme.mlp/infer",
        {"inputs": [{"name": "other", "shape": [1], "datatype": "FP32", "data": [1]}]},
    )
    assert response.status_code == 400
    assert "'other' is not an input" in response.json()["error"]


def test_a_missing_input_of_a_two_input_model_is_named(worker, model_files):
    worker["host"].load(load_command(model_files["adder"], model="adder"))
    one = {"name": "a", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
    response = post(worker, "/v2/models/acme.adder/infer", {"inputs": [one]})
    assert response.status_code == 400
    assert response.json()["error"] == "missing input(s) ['b']; the model takes ['a', 'b']"
    both = post(worker, "/v2/models/acme.adder/infer", {"inputs": [one, {**one, "name": "b"}]})
    assert both.status_code == 200 and both.json()["outputs"][0]["data"] == [2, 4, 6, 8]


def test_binary_length_mismatches_are_400(worker):
    array = np.arange(8, dtype="<f4")
    header = json.dumps(
        {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}
    ).encode()
    short = post(
        worker,
        "/v2/models/acme.doubler/infer",
        header + array.tobytes()[:16],
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert short.status_code == 400 and "needs 32" in short.json()["error"]
    past = post(
        worker, "/v2/models/acme.doubler/infer", header, {"Inference-Header-Content-Length": str(len(header) + 10)}
    )
    assert past.status_code == 400 and "only" in past.json()["error"]
    extra = post(
        worker,
        "/v2/models/acme.doubler/infer",
        header + array.tobytes() + b"xx",
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert extra.status_code == 400


def test_a_body_over_the_limit_is_413(worker):
    huge = doubler_request(data=[1.0] * 40_000, shape=(10_000, 4))
    response = post(worker, "/v2/models/acme.doubler/infer", huge)
    assert response.status_code == 413
    assert "at most" in response.json()["error"]


def test_a_request_over_max_batch_size_is_400(worker):
    response = post(
        worker,
        "/v2/models/acme.mlp/infer",
        {"inputs": [{"name": "input", "shape": [5, 256], "datatype": "FP32", "data": [0.0] * 1280}]},
    )
    assert response.status_code == 400
    assert "at most 4" in response.json()["error"]


def test_draining_refuses_new_inference_with_503(worker):
    worker["draining"]["value"] = True
    response = post(worker, "/v2/models/acme.doubler/infer", doubler_request())
    assert response.status_code == 503


def test_metrics_count_requests_per_model(worker):
    post(worker, "/v2/models/acme.doubler/versions/1/infer", doubler_request())
    assert httpx.get(worker["url"] + "/metrics").status_code == 401  # it names tenants and models
    text = httpx.get(worker["url"] + "/metrics", headers=AUTH).text
    assert 'berth_worker_requests_total{model="doubler",outcome="ok",tenant="acme",version="1"} 1.0' in text
    assert "berth_worker_batch_size_bucket" in text


def test_bytes_tensors_round_trip_in_binary():
    from inference_workers.codec import _bytes_elements, _to_bytes

    array = np.array([b"ab", b"", b"xyz"], dtype=object)
    raw = _to_bytes(array, "BYTES")
    assert raw == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0) + struct.pack("<I", 3) + b"xyz"
    assert _bytes_elements(memoryview(raw), 3, "t") == [b"ab", b"", b"xyz"]


@pytest.mark.parametrize(
    ("item", "complaint"),
    [
        ({"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, None, 3, 4]}, "must be numbers"),
        ({"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ["1", "2", "3", "4"]}, "must be numbers"),
        ({"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [True, False, True, False]}, "must be numbers"),
        ({"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1e39, 1, 2, 3]}, "too large"),
        (
            {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4], "parameters": [1]},
            "'parameters' must be",
        ),
        (
            {"name": "input", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": True}},
            "binary_data_size",
        ),
    ],
)
def test_silent_conversions_are_refused(worker, item, complaint):
    response = post(worker, "/v2/models/acme.doubler/infer", {"inputs": [item]})
    assert response.status_code == 400
    assert complaint in response.json()["error"]


def test_malformed_output_parameters_are_400_not_500(worker):
    body = doubler_request(outputs=[{"name": "output", "parameters": 7}])
    response = post(worker, "/v2/models/acme.doubler/infer", body)
    assert response.status_code == 400 and "parameters" in response.json()["error"]
    response = post(worker, "/v2/models/acme.doubler/infer", doubler_request(parameters={"binary_data_output": 1}))
    assert response.status_code == 400


def test_integer_inputs_refuse_fractions_and_out_of_range():
    from inference_workers.codec import decode_request
    from inference_workers.errors import InvalidInputError

    spec = TensorSpec("i", "INT32", (-1,))
    for data, complaint in (([1.5], "whole numbers"), ([2**40], "outside the range"), (["7"], "whole numbers")):
        body = json.dumps({"inputs": [{"name": "i", "shape": [1], "datatype": "INT32", "data": data}]}).encode()
        with pytest.raises(InvalidInputError, match=complaint):
            decode_request(body, header_length=None, signature_inputs=[spec])


def test_bytes_from_json_must_be_strings():
    from inference_workers.codec import decode_request
    from inference_workers.errors import InvalidInputError

    spec = TensorSpec("s", "BYTES", (-1,))
    body = json.dumps({"inputs": [{"name": "s", "shape": [1], "datatype": "BYTES", "data": [100000000]}]}).encode()
    with pytest.raises(InvalidInputError, match="strings"):
        decode_request(body, header_length=None, signature_inputs=[spec])


def test_fp16_cannot_travel_as_json():
    from inference_workers.codec import decode_request
    from inference_workers.errors import InvalidInputError

    spec = TensorSpec("h", "FP16", (-1,))
    with pytest.raises(InvalidInputError, match="binary"):
        decode_request(
            json.dumps({"inputs": [{"name": "h", "shape": [1], "datatype": "FP16", "data": [1.0]}]}).encode(),
            header_length=None,
            signature_inputs=[spec],
        )
