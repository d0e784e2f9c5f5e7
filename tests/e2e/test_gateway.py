"""The gateway end to end: a stock v2 client against the platform as ``make run`` starts it.

One platform boots for the module, with the demo model deployed by the seed (as in
``make run``); the tests run in file order and each leaves the platform as it found it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import re
import signal
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import tritonclient.http as v2

from tests.conftest import PYTHON, REPO_ROOT
from tests.e2e.conftest import Platform, boot_platform

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MODEL = "demo-mlp"


@pytest.fixture(scope="module")
def gateway_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("gateway")
    with boot_platform(
        tmp,
        BERTH_SEED_DEMO_DEPLOY="1",
        BERTH_GATEWAY_TIMEOUT_S="2",
        BERTH_GATEWAY_COLD_START_S="15",
        BERTH_WORKER_ACCESS_LOG="1",  # the kill test counts executions by X-Request-ID
    ) as platform:
        platform.wait_healthy()
        yield platform


def _demo_key(platform: Platform) -> str:
    match = re.search(r"API key (brt_\S+)", platform.log())
    assert match, platform.log()[-2000:]
    return match[1]


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _wait_ready(platform: Platform, key: str, model: str = MODEL, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{platform.base_url}/v2/models/{model}/ready", headers=_bearer(key)).status_code != 200:
        assert time.monotonic() < deadline, f"{model} never became ready:\n{platform.log()[-3000:]}"
        time.sleep(0.3)


def _wait_logged(read: Callable[[], str], *needles: str, timeout: float = 10) -> str:
    """The log once every needle is in it: worker lines reach the platform's log file through
    the process runner's pipe, a moment after the answer they precede."""
    deadline = time.monotonic() + timeout
    while True:
        text = read()
        missing = [needle for needle in needles if needle not in text]
        if not missing:
            return text
        assert time.monotonic() < deadline, f"not logged within {timeout} s: {missing[:3]}"
        time.sleep(0.2)


def _client(platform: Platform) -> v2.InferenceServerClient:
    return v2.InferenceServerClient(platform.base_url.removeprefix("http://"))


def _infer_json(platform: Platform, key: str, body: object, *, model: str = MODEL, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{platform.base_url}/v2/models/{model}/infer",
        content=body if isinstance(body, bytes) else json.dumps(body).encode(),
        headers={**_bearer(key), "Content-Type": "application/json", **headers},
        timeout=30,
    )


ONE_ROW = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def test_the_printed_demo_snippet_runs_against_the_seeded_deployment(gateway_platform: Platform):
    key = _demo_key(gateway_platform)
    _wait_ready(gateway_platform, key)
    log = gateway_platform.log()
    snippet = log[log.index("python - <<'PY'") :].split("\n", 1)[1].split("\nPY", 1)[0]
    snippet = re.sub(r"^\S+\s+\| ", "", snippet, flags=re.M)  # honcho's prefixes, if any
    run = subprocess.run([PYTHON, "-c", snippet], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert run.returncode == 0, run.stderr
    assert "[[" in run.stdout
    curl = re.search(r"curl -s .*?/infer", log, flags=re.S)
    assert curl and f"{gateway_platform.base_url}/v2/models/{MODEL}/infer" in curl[0]
    # The printed curl runs as printed (its line continuations and quoting included).
    command = re.sub(r"^\S+\s+\| ", "", curl[0], flags=re.M)
    answered = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert answered.returncode == 0, answered.stderr
    reply = json.loads(answered.stdout)
    assert reply["model_name"] == MODEL and reply["outputs"][0]["shape"] == [1, 3], reply


def test_a_stock_client_reads_health_metadata_and_the_repository(gateway_platform: Platform):
    key = _demo_key(gateway_platform)
    _wait_ready(gateway_platform, key)
    client = _client(gateway_platform)
    assert client.is_server_live()
    assert client.is_server_ready()
    server = client.get_server_metadata()
    assert {"binary_tensor_data", "model_repository"} <= set(server["extensions"])
    assert client.is_model_ready(MODEL, headers=_bearer(key))
    assert client.is_model_ready(MODEL, "1", headers=_bearer(key))
    metadata = client.get_model_metadata(MODEL, headers=_bearer(key))
    assert metadata["name"] == MODEL
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}]
    assert client.get_model_metadata(MODEL, "1", headers=_bearer(key))["name"] == MODEL
    index = client.get_model_repository_index(headers=_bearer(key))
    assert {"name": MODEL, "version": "1", "state": "READY", "reason": ""} in index


@pytest.mark.parametrize("binary", [False, True])
def test_a_stock_client_infers_json_and_binary(gateway_platform: Platform, binary: bool):
    key = _demo_key(gateway_platform)
    _wait_ready(gateway_platform, key)
    client = _client(gateway_platform)
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    data = v2.InferInput("input", [3, 4], "FP32")
    data.set_data_from_numpy(rows, binary_data=binary)
    wanted = v2.InferRequestedOutput("output", binary_data=binary)
    result = client.infer(MODEL, [data], outputs=[wanted], request_id="req-7", headers=_bearer(key))
    out = result.as_numpy("output")
    assert out.shape == (3, 3) and out.dtype == np.float32
    response = result.get_response()
    assert response["model_name"] == MODEL
    assert response["model_version"] == "1"
    assert response["id"] == "req-7"
    # Row-wise model: each row's answer does not depend on the others in the request.
    single = v2.InferInput("input", [1, 4], "FP32")
    single.set_data_from_numpy(rows[1:2], binary_data=binary)
    alone = client.infer(MODEL, [single], model_version="1", headers=_bearer(key)).as_numpy("output")
    np.testing.assert_allclose(alone[0], out[1], rtol=1e-5)
    # A compressed request body travels to the worker as it came and is inflated there.
    packed = client.infer(
        MODEL, [data], outputs=[wanted], headers=_bearer(key), request_compression_algorithm="gzip"
    ).as_numpy("output")
    np.testing.assert_allclose(packed, out, rtol=1e-5)


def test_the_request_id_is_kept_or_made_and_returned(gateway_platform: Platform):
    key = _demo_key(gateway_platform)
    _wait_ready(gateway_platform, key)
    given = _infer_json(gateway_platform, key, ONE_ROW, **{"X-Request-ID": "trace-abc.1"})
    assert given.status_code == 200, given.text
    assert given.headers["x-request-id"] == "trace-abc.1"
    made = _infer_json(gateway_platform, key, ONE_ROW)
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    refused = httpx.get(f"{gateway_platform.base_url}/v2/models/{MODEL}", headers={"X-Request-ID": "r-1"})
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "r-1"
    for unusable in ("has spaces", "x" * 129, "semi;colon"):  # not echoed: a fresh one instead
        replaced = _infer_json(gateway_platform, key, ONE_ROW, **{"X-Request-ID": unusable})
        assert replaced.status_code == 200, replaced.text
        assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"])


def _make_tenant_with_model(platform: Platform, slug: str, *, scopes: list[str], **quota: int) -> str:
    """A second tenant with its own ``demo-mlp`` (same name), deployed; returns its key."""
    from apps.registry.demo import demo_model_bytes

    with platform.admin() as admin:
        assert admin.post("/api/v1/tenants/", json={"slug": slug, "name": slug}).status_code == 201
        if quota:
            assert admin.patch(f"/api/v1/tenants/{slug}/quota/", json=quota).status_code == 200
        created = admin.post(f"/api/v1/tenants/{slug}/api-keys/", json={"name": "k", "scopes": ["manage", "read"]})
        manage_key = created.json()["key"]
        infer = admin.post(f"/api/v1/tenants/{slug}/api-keys/", json={"name": "i", "scopes": scopes})
        key = infer.json()["key"]
    base = f"{platform.base_url}/api/v1/tenants/{slug}/models/{MODEL}"
    uploaded = httpx.post(
        f"{base}/versions/", headers=_bearer(manage_key), files={"file": ("m.onnx", demo_model_bytes())}, timeout=30
    )
    assert uploaded.status_code == 202, uploaded.text
    deadline = time.monotonic() + 90
    while httpx.get(f"{base}/versions/1/", headers=_bearer(manage_key)).json()["status"] == "validating":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    deployed = httpx.put(f"{base}/deployment/", headers=_bearer(manage_key), json={"traffic": {"1": 100}})
    assert deployed.status_code == 200, deployed.text
    return key


def test_tenants_are_isolated_and_a_revoked_key_stops_within_2_s(gateway_platform: Platform):
    demo_key = _demo_key(gateway_platform)
    other_key = _make_tenant_with_model(gateway_platform, "other", scopes=["infer"])
    _wait_ready(gateway_platform, other_key)
    # The same model name in two tenants: each key reaches its own tenant's model only. The
    # models answer alike, so the workers' access log shows where each request went.
    for key, tag in ((other_key, "iso-other"), (demo_key, "iso-demo")):
        answer = _infer_json(gateway_platform, key, ONE_ROW, **{"X-Request-ID": tag})
        assert answer.status_code == 200, answer.text
    _wait_logged(
        gateway_platform.log,
        "/v2/models/other.demo-mlp/versions/1/infer 200 request=iso-other",
        "/v2/models/demo.demo-mlp/versions/1/infer 200 request=iso-demo",
    )
    # demo-only: a model of the demo tenant only, with a version (validated, not deployed).
    from apps.registry.demo import demo_model_bytes

    with gateway_platform.admin() as admin:
        admin.post("/api/v1/tenants/demo/models/", json={"name": "demo-only"})
        uploaded = admin.post(
            "/api/v1/tenants/demo/models/demo-only/versions/", files={"file": ("m.onnx", demo_model_bytes())}
        )
        assert uploaded.status_code == 202, uploaded.text
        deadline = time.monotonic() + 90
        while admin.get("/api/v1/tenants/demo/models/demo-only/versions/1/").json()["status"] == "validating":
            assert time.monotonic() < deadline
            time.sleep(0.3)
    own = httpx.get(f"{gateway_platform.base_url}/v2/models/demo-only/versions/1", headers=_bearer(demo_key))
    assert own.status_code == 200, own.text  # its own tenant reads it
    index = _client(gateway_platform).get_model_repository_index(headers=_bearer(other_key))
    assert [entry["name"] for entry in index] == [MODEL]
    for path in (
        "/v2/models/demo-only",
        "/v2/models/demo-only/ready",
        "/v2/models/demo-only/versions/1",
        "/v2/models/demo-only/versions/1/ready",
        "/v2/models/no-such-model",
    ):
        answer = httpx.get(f"{gateway_platform.base_url}{path}", headers=_bearer(other_key))
        assert answer.status_code == 404, (path, answer.text)
    pinned = httpx.post(
        f"{gateway_platform.base_url}/v2/models/demo-only/versions/1/infer", json=ONE_ROW, headers=_bearer(other_key)
    )
    assert pinned.status_code == 404, pinned.text
    # Another tenant's model and a model that exists nowhere read the same.
    foreign = httpx.get(f"{gateway_platform.base_url}/v2/models/demo-only", headers=_bearer(other_key)).json()
    unknown = httpx.get(f"{gateway_platform.base_url}/v2/models/nothing-xy", headers=_bearer(other_key)).json()
    assert foreign["error"].replace("demo-only", "?") == unknown["error"].replace("nothing-xy", "?")
    assert _infer_json(gateway_platform, other_key, ONE_ROW, model="demo-only").status_code == 404
    # Its own tenant sees it, and is told it is not deployed.
    deadline = time.monotonic() + 5
    while (own := _infer_json(gateway_platform, demo_key, ONE_ROW, model="demo-only")).status_code == 404:
        assert time.monotonic() < deadline, own.text
        time.sleep(0.2)
    assert own.status_code == 503 and "not deployed" in own.json()["error"]
    # A key without the infer scope, no key, a wrong key.
    with gateway_platform.admin() as admin:
        read_only = admin.post("/api/v1/tenants/other/api-keys/", json={"name": "r", "scopes": ["read"]}).json()
    assert _infer_json(gateway_platform, read_only["key"], ONE_ROW).status_code == 403
    assert "infer" in _infer_json(gateway_platform, read_only["key"], ONE_ROW).json()["error"]
    assert httpx.post(f"{gateway_platform.base_url}/v2/models/{MODEL}/infer", json=ONE_ROW).status_code == 401
    assert _infer_json(gateway_platform, "brt_00000000_wrong", ONE_ROW).status_code == 401
    # Revoke: refused within 2 s.
    prefix = other_key.split("_")[1]
    with gateway_platform.admin() as admin:
        assert admin.delete(f"/api/v1/tenants/other/api-keys/{prefix}/").status_code in (200, 204)
    revoked_at = time.monotonic()
    while _infer_json(gateway_platform, other_key, ONE_ROW).status_code == 200:
        assert time.monotonic() - revoked_at < 2.0, "a revoked key still worked after 2 s"
        time.sleep(0.05)
    assert _infer_json(gateway_platform, other_key, ONE_ROW).status_code == 401


@pytest.mark.parametrize(
    ("body", "header_length", "needle"),
    [
        (b'{"inputs": [', None, "not valid JSON"),
        (
            {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "INT8", "data": [1, 2, 3, 4]}]},
            None,
            "input 'input' has datatype INT8; the model expects FP32",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}]},
            None,
            "input 'input': dimension 1 is 5; the model expects 4",
        ),
        (
            {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
            None,
            "input 'input': 4 elements given for shape [2, 4]",
        ),
        ({"inputs": []}, None, "the request needs a non-empty 'inputs' list"),
        (
            {"inputs": [{"name": "nope", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
            None,
            "input 'nope' is not an input of this model",
        ),
        ("binary-short", "len", "input 'input': binary_data_size 16 runs past the end of the body (12 bytes left)"),
    ],
    ids=[
        "malformed-json",
        "wrong-datatype",
        "wrong-shape",
        "data-shape-mismatch",
        "missing-input",
        "unknown-input",
        "binary-length",
    ],
)
def test_bad_requests_get_a_clear_400(gateway_platform: Platform, body, header_length, needle):
    key = _demo_key(gateway_platform)
    _wait_ready(gateway_platform, key)
    headers = {}
    if body == "binary-short":
        header = json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}
        ).encode()
        body = header + struct.pack("<3f", 1, 2, 3)  # 12 bytes where 16 were announced
        headers["Inference-Header-Content-Length"] = str(len(header))
    answer = _infer_json(gateway_platform, key, body, **headers)
    assert answer.status_code == 400, answer.text
    assert needle.lower() in answer.json()["error"].lower(), answer.text


def test_a_missing_input_of_a_two_input_model_is_a_clear_400(gateway_platform: Platform, tmp_path: Path):
    from tests.inference_workers.models import adder_onnx

    key = _demo_key(gateway_platform)
    base = "/api/v1/tenants/demo/models/adder"
    with gateway_platform.admin() as admin:
        assert admin.post("/api/v1/tenants/demo/models/", json={"name": "adder"}).status_code == 201
        artifact = adder_onnx(tmp_path / "adder.onnx")
        uploaded = admin.post(f"{base}/versions/", files={"file": ("adder.onnx", artifact.read_bytes())})
        assert uploaded.status_code == 202, uploaded.text
        deadline = time.monotonic() + 90
        while (status := admin.get(f"{base}/versions/1/").json()["status"]) == "validating":
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert status == "ready", admin.get(f"{base}/versions/1/").text
        assert admin.put(f"{base}/deployment/", json={"traffic": {"1": 100}}).status_code == 200
    try:
        _wait_ready(gateway_platform, key, model="adder")
        one = {"name": "a", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
        missing = _infer_json(gateway_platform, key, {"inputs": [one]}, model="adder")
        assert missing.status_code == 400
        assert missing.json()["error"] == "missing input(s) ['b']; the model takes ['a', 'b']"
        both = _infer_json(gateway_platform, key, {"inputs": [one, {**one, "name": "b"}]}, model="adder")
        assert both.status_code == 200 and both.json()["outputs"][0]["data"] == [2, 4, 6, 8]
    finally:
        with gateway_platform.admin() as admin:
            admin.delete(f"{base}/deployment/")


def test_protocol_misuse_gets_clear_errors(gateway_platform: Platform):
    key = _demo_key(gateway_platform)
    base = gateway_platform.base_url
    for body in (b"{bad", b"[1]", b'{"ready": "yes"}'):
        answer = httpx.post(f"{base}/v2/repository/index", content=body, headers=_bearer(key))
        assert answer.status_code == 400, answer.text
        assert "repository index" in answer.json()["error"]
    wrong = httpx.post(f"{base}/v2/health/live")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"
    wrong = httpx.get(f"{base}/v2/models/{MODEL}/infer", headers=_bearer(key))
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert httpx.get(f"{base}/v2/no/such/route").status_code == 404
    # The scheme is case-insensitive, as HTTP says.
    lower = httpx.get(f"{base}/v2/models/{MODEL}", headers={"Authorization": f"bearer {key}"})
    assert lower.status_code == 200


def test_a_body_over_the_limit_is_refused_with_413_before_it_is_read(gateway_platform: Platform):
    key = _demo_key(gateway_platform)
    limit = 64 * 1024 * 1024
    host, port = gateway_platform.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(
            f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {limit + 1}\r\n\r\n".encode()
            + b"x" * 1024  # the gateway answers from the header, without waiting for the rest
        )
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = raw.recv(65536)
            if not chunk:
                break
            reply += chunk
    text = reply.decode(errors="replace")
    assert text.startswith("HTTP/1.1 413"), text
    assert "BERTH_GATEWAY_MAX_BODY_MB" in text


def test_a_streamed_body_over_the_limit_is_refused_with_413(gateway_platform: Platform):
    """A chunked body says no length up front: the gateway counts as it reads and stops at the limit."""
    key = _demo_key(gateway_platform)
    limit = 64 * 1024 * 1024
    host, port = gateway_platform.base_url.removeprefix("http://").split(":")
    chunk = b"%x\r\n%s\r\n" % (1024 * 1024, b"x" * 1024 * 1024)
    replies: list[bytes] = []
    with socket.create_connection((host, int(port)), timeout=30) as raw:

        def read() -> None:  # reads while the body is still going out, so no reset can hide the answer
            try:
                while chunk_read := raw.recv(65536):
                    replies.append(chunk_read)
                    head, _, body = b"".join(replies).partition(b"\r\n\r\n")
                    length = re.search(rb"(?i)content-length: *(\d+)", head)
                    if length and len(body) >= int(length[1]):
                        return  # one whole answer
            except OSError:
                pass

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            reader = pool.submit(read)
            raw.sendall(
                f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            )
            sent = 0
            try:
                while sent <= limit + 4 * len(chunk) and not replies:
                    raw.sendall(chunk)
                    sent += 1024 * 1024
            except OSError:  # the gateway answered and closed while the body was still coming
                pass
            reader.result(timeout=30)
    text = b"".join(replies).decode(errors="replace")
    assert text.startswith("HTTP/1.1 413"), (sent, text[:500])
    assert "BERTH_GATEWAY_MAX_BODY_MB" in text
    assert sent > limit - len(chunk)  # refused once past the limit, not before
    # The gateway is still serving.
    assert _infer_json(gateway_platform, key, ONE_ROW).status_code == 200


def test_rate_limit_answers_429_with_retry_after(gateway_platform: Platform):
    key = _make_tenant_with_model(gateway_platform, "limited", scopes=["infer"], requests_per_second=5)
    _wait_ready(gateway_platform, key)
    time.sleep(1.2)  # a full bucket
    counted = gateway_platform.metric("berth_gateway_requests_total", tenant="limited", model=MODEL, code="429")
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # a burst, so a slow machine still exceeds 5/s
        answers = list(pool.map(lambda _: _infer_json(gateway_platform, key, ONE_ROW), range(24)))
    elapsed = time.monotonic() - started
    statuses = [answer.status_code for answer in answers]
    for answer in answers:
        if answer.status_code == 429:  # most answered from the parser (fastpath.py): the same answer
            assert int(answer.headers["retry-after"]) >= 1
            assert answer.headers["content-type"] == "application/json"
            assert len(answer.headers["x-request-id"]) == 32
            assert "rate limit of 5 requests/s" in answer.json()["error"]
    # A full bucket of 5, plus 5 a second while the burst lasted: never more got through.
    assert 5 <= statuses.count(200) <= 5 + 5 * elapsed + 1, (statuses, elapsed)
    assert statuses.count(429) == 24 - statuses.count(200) and statuses.count(429) >= 1, statuses
    # Every refusal is counted against the tenant's model, whichever way it was answered.
    refused = gateway_platform.metric("berth_gateway_requests_total", tenant="limited", model=MODEL, code="429")
    assert refused - counted == statuses.count(429)
    # A refused request's body was dropped in step: the connection's next request is served.
    with httpx.Client(base_url=gateway_platform.base_url, headers=_bearer(key)) as client:
        url = f"/v2/models/{MODEL}/infer"
        tagged = [client.post(url, json=ONE_ROW, headers={"X-Request-ID": f"rl-{i}"}) for i in range(12)]
        time.sleep(0.5)
        served = client.post(url, json=ONE_ROW)
    assert 429 in [answer.status_code for answer in tagged]
    assert [answer.headers["x-request-id"] for answer in tagged] == [f"rl-{i}" for i in range(12)]
    assert served.status_code == 200, served.text
    # The demo tenant is not affected by another tenant's limit.
    assert _infer_json(gateway_platform, _demo_key(gateway_platform), ONE_ROW).status_code == 200


def _worker_process(platform: Platform) -> psutil.Process:
    for child in platform.descendants():
        if "inference_workers" in " ".join(child.cmdline()) and platform.worker_id in " ".join(child.cmdline()):
            return child
    for child in platform.descendants():
        if "inference_workers" in " ".join(child.cmdline()):
            return child
    raise AssertionError("no inference worker process")


def test_a_hung_worker_gives_504_and_holds_a_concurrency_slot(gateway_platform: Platform):
    key = _make_tenant_with_model(gateway_platform, "single", scopes=["infer"], max_concurrent_requests=1)
    _wait_ready(gateway_platform, key)
    worker = _worker_process(gateway_platform)
    worker.suspend()  # SIGSTOP: connections are accepted by the kernel, nothing answers
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(_infer_json, gateway_platform, key, ONE_ROW)
            time.sleep(0.5)
            second = _infer_json(gateway_platform, key, ONE_ROW)
            assert second.status_code == 429, second.text
            assert "in flight" in second.json()["error"]
            assert int(second.headers["retry-after"]) >= 1
            hung = first.result(timeout=20)
        assert hung.status_code == 504, hung.text
        assert "BERTH_GATEWAY_TIMEOUT_S" in hung.json()["error"]
    finally:
        worker.resume()
    _wait_ready(gateway_platform, key)


def test_metrics_count_requests_per_tenant_and_are_closed_to_tenant_keys(gateway_platform: Platform):
    key = _demo_key(gateway_platform)
    _wait_ready(gateway_platform, key)
    before = gateway_platform.metric("berth_gateway_requests_total", tenant="demo", model=MODEL, code="200")
    for _ in range(3):
        assert _infer_json(gateway_platform, key, ONE_ROW).status_code == 200
    after = gateway_platform.metric("berth_gateway_requests_total", tenant="demo", model=MODEL, code="200")
    assert after - before == 3
    assert gateway_platform.metric("berth_gateway_request_duration_seconds_count", tenant="demo") >= 3
    assert httpx.get(f"{gateway_platform.base_url}/metrics", headers=_bearer(key)).status_code == 403
    assert httpx.get(f"{gateway_platform.base_url}/metrics").status_code in (401, 403)


def _session_cookie(platform: Platform, username: str, password: str) -> str:
    with httpx.Client(base_url=platform.base_url, timeout=10) as browser:
        form = browser.get("/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        assert token, form.text[:500]
        signed_in = browser.post(
            "/login/",
            data={"username": username, "password": password, "csrfmiddlewaretoken": token[1]},
            headers={"Referer": f"{platform.base_url}/login/"},
        )
        assert signed_in.status_code in (200, 302) and "sessionid" in browser.cookies, signed_in.text[:500]
        return browser.cookies["sessionid"]


def test_an_inference_shows_on_the_tenants_live_metrics_socket_within_3_s(gateway_platform: Platform):
    import asyncio

    import websockets

    from tests.e2e.conftest import ADMIN_PASSWORD

    key = _demo_key(gateway_platform)
    _wait_ready(gateway_platform, key)
    cookie = _session_cookie(gateway_platform, "demo-owner", ADMIN_PASSWORD)
    ws_url = gateway_platform.base_url.replace("http://", "ws://") + f"/ws/tenants/demo/metrics/?model={MODEL}"

    async def watch() -> float:
        async with websockets.connect(
            ws_url, additional_headers={"Cookie": f"sessionid={cookie}", "Origin": gateway_platform.base_url}
        ) as socket:
            history = json.loads(await socket.recv())
            assert history["type"] == "metrics.history"
            sent_at = time.monotonic()
            await asyncio.to_thread(_infer_json, gateway_platform, key, ONE_ROW)
            while True:
                message = json.loads(await asyncio.wait_for(socket.recv(), timeout=5))
                if message["type"] == "metrics.update" and any(p["requests"] for p in message["points"]):
                    assert all(p["model"] == MODEL for p in message["points"])
                    return time.monotonic() - sent_at

    assert asyncio.run(watch()) < 3.0
    # Without a session the socket is refused at connect (cross-tenant refusals: the consumer tests).
    refused_url = gateway_platform.base_url.replace("http://", "ws://") + "/ws/tenants/demo/metrics/"

    async def foreign() -> None:
        # Accepted, then closed with 4401 ("sign in"), a code the browser can read.
        async with websockets.connect(refused_url, additional_headers={"Origin": gateway_platform.base_url}) as s:
            try:
                await asyncio.wait_for(s.recv(), timeout=5)
            except websockets.ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == 4401
            else:
                raise AssertionError("an anonymous socket was sent data")

    asyncio.run(foreign())
    # The stored series has the request too, and soon the worker's batches (its heartbeats).
    deadline = time.monotonic() + 10
    while True:
        series = httpx.get(
            f"{gateway_platform.base_url}/api/v1/tenants/demo/metrics/?model={MODEL}", headers=_bearer(key)
        ).json()
        if sum(p["batches"] for p in series["points"]) >= 1:
            break
        assert time.monotonic() < deadline, series
        time.sleep(0.5)
    assert sum(p["requests"] for p in series["points"]) >= 1
    batched = [p for p in series["points"] if p["batches"]]
    assert all(p["compute_p50_ms"] is not None and p["mean_batch_size"] >= 1 for p in batched)


def test_sampled_predictions_are_logged_scored_by_feedback_and_charged(gateway_platform: Platform):
    key = _demo_key(gateway_platform)
    _wait_ready(gateway_platform, key)
    base = f"/api/v1/tenants/demo/models/{MODEL}"
    with gateway_platform.admin() as admin:
        logging_on = {"prediction_log": {"sample_rate": 1.0, "task": "classification"}}
        assert admin.patch(f"{base}/deployment/", json=logging_on).status_code == 200
        time.sleep(1.5)  # every gateway process re-reads its routing table
        predicted: dict[str, int] = {}
        for n in range(3):  # JSON, with our own X-Request-ID
            answer = _infer_json(gateway_platform, key, ONE_ROW, **{"X-Request-ID": f"fb-{n}-{uuid.uuid4().hex[:6]}"})
            assert answer.status_code == 200, answer.text
            predicted[answer.headers["x-request-id"]] = int(np.argmax(answer.json()["outputs"][0]["data"]))
        # A stock client, binary tensors, naming the request by the v2 body's id.
        data = v2.InferInput("input", [1, 4], "FP32")
        data.set_data_from_numpy(np.array([[4, 3, 2, 1]], dtype=np.float32), binary_data=True)
        result = _client(gateway_platform).infer(
            MODEL, [data], outputs=[v2.InferRequestedOutput("output", binary_data=True)],
            request_id="client-7", headers=_bearer(key),
        )  # fmt: skip
        predicted["client-7"] = int(np.argmax(result.as_numpy("output")[0]))
        deadline = time.monotonic() + 10
        while len(logged := admin.get(f"{base}/predictions/?limit=10").json()) < 4:
            assert time.monotonic() < deadline, logged
            time.sleep(0.3)
        assert any(row["inference_id"] == "client-7" and row["outputs"][0]["shape"] == [1, 3] for row in logged)
        ids = list(predicted)
        truth = [{"request_id": rid, "ground_truth": predicted[rid]} for rid in ids[:3]]
        truth.append({"request_id": ids[3], "ground_truth": (predicted[ids[3]] + 1) % 3})  # one wrong
        scored = httpx.post(
            f"{gateway_platform.base_url}{base}/feedback/", headers=_bearer(key), json={"feedback": truth}
        ).json()
        assert scored["scored"] == 4, scored
        accuracy = admin.get(f"{base}/accuracy/?range=24h").json()
        assert accuracy["versions"] == [{"version": 1, "rows": 4, "accuracy": 0.75, "mae": None}], accuracy
        assert admin.patch(f"{base}/deployment/", json={"prediction_log": {}}).status_code == 200
        # The worker's heartbeats charged the device time: predictions and cost show as usage.
        deadline = time.monotonic() + 15
        while not (usage := admin.get("/api/v1/tenants/demo/usage/").json())["total"]["predictions"]:
            assert time.monotonic() < deadline, usage
            time.sleep(0.5)
        assert usage["total"]["device_s"] > 0 and float(usage["total"]["cost"]) > 0, usage
        csv_text = admin.get("/api/v1/tenants/demo/usage/?format=csv").text
        assert csv_text.startswith("date,model,version,") and MODEL in csv_text


def test_a_90_10_canary_split_holds_within_5_percent_over_2000_requests(gateway_platform: Platform):
    from apps.registry.demo import demo_model_bytes

    key = _demo_key(gateway_platform)
    base = f"{gateway_platform.base_url}/api/v1/tenants/demo/models/{MODEL}"
    with gateway_platform.admin() as admin:
        quota = {"requests_per_second": 100_000, "max_concurrent_requests": 1000}
        assert admin.patch("/api/v1/tenants/demo/quota/", json=quota).status_code == 200
    uploaded = httpx.post(
        f"{base}/versions/", headers=_bearer(key), files={"file": ("m.onnx", demo_model_bytes())}, timeout=30
    )
    assert uploaded.status_code == 202, uploaded.text
    number = uploaded.json()["number"]
    deadline = time.monotonic() + 90
    while httpx.get(f"{base}/versions/{number}/", headers=_bearer(key)).json()["status"] == "validating":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    split = {"1": 90, str(number): 10}
    assert httpx.patch(f"{base}/deployment/", headers=_bearer(key), json={"traffic": split}).status_code == 200
    try:
        for version in ("1", str(number)):
            while (
                httpx.get(
                    f"{gateway_platform.base_url}/v2/models/{MODEL}/versions/{version}/ready", headers=_bearer(key)
                ).status_code
                != 200
            ):
                assert time.monotonic() < deadline, f"version {version} never became ready"
                time.sleep(0.3)
        time.sleep(1.0)  # every gateway snapshot has both

        def served_by(count: int) -> list[str]:
            # One keep-alive client per thread, as an application holds one.
            with httpx.Client(headers=_bearer(key), timeout=30) as client:
                versions = []
                for _ in range(count):
                    answer = client.post(f"{gateway_platform.base_url}/v2/models/{MODEL}/infer", json=ONE_ROW)
                    assert answer.status_code == 200, answer.text
                    versions.append(answer.json()["model_version"])
                return versions

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            versions = [version for part in pool.map(served_by, [500] * 4) for version in part]
        assert len(versions) == 2000
        share = versions.count(str(number)) / len(versions)
        assert abs(share - 0.10) <= 0.05, share
        assert set(versions) == {"1", str(number)}
        # A pinned version is served by that version only.
        pinned = httpx.post(
            f"{gateway_platform.base_url}/v2/models/{MODEL}/versions/{number}/infer",
            json=ONE_ROW,
            headers=_bearer(key),
        )
        assert pinned.json()["model_version"] == str(number)
    finally:
        httpx.patch(f"{base}/deployment/", headers=_bearer(key), json={"traffic": {"1": 100}})


def test_a_scaled_to_zero_model_cold_starts_once_for_concurrent_requests(gateway_platform: Platform):
    key = _demo_key(gateway_platform)
    base = f"{gateway_platform.base_url}/api/v1/tenants/demo/models/{MODEL}/deployment/"
    _wait_ready(gateway_platform, key)
    assert httpx.patch(base, headers=_bearer(key), json={"scale_to_zero_after_s": 4}).status_code == 200
    try:
        deadline = time.monotonic() + 30
        while httpx.get(base, headers=_bearer(key)).json()["replicas"]:
            assert time.monotonic() < deadline, "never scaled to zero"
            time.sleep(0.3)
        time.sleep(1.0)  # the gateway's routing table has caught up
        assert (
            httpx.get(f"{gateway_platform.base_url}/v2/models/{MODEL}/ready", headers=_bearer(key)).status_code == 503
        )
        index = _client(gateway_platform).get_model_repository_index(headers=_bearer(key))
        assert next(e for e in index if e["name"] == MODEL)["state"] != "READY"
        before = gateway_platform.metric("berth_gateway_cold_starts_total", tenant="demo", model=MODEL)
        loads = re.compile(rf"loaded demo/{MODEL}/\d+:")
        loads_before = len(loads.findall(gateway_platform.log()))
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: _infer_json(gateway_platform, key, ONE_ROW), range(6)))
        assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
        after = gateway_platform.metric("berth_gateway_cold_starts_total", tenant="demo", model=MODEL)
        assert after - before == 1
        # And the fleet loaded the model once: one replica, one load on the worker.
        assert len(httpx.get(base, headers=_bearer(key)).json()["replicas"]) == 1
        deadline = time.monotonic() + 10
        while len(loads.findall(gateway_platform.log())) == loads_before:
            assert time.monotonic() < deadline, "the worker never logged the load"
            time.sleep(0.2)
        time.sleep(1.0)  # a second load, had there been one, would be logged by now
        assert len(loads.findall(gateway_platform.log())) == loads_before + 1
    finally:
        httpx.patch(base, headers=_bearer(key), json={"scale_to_zero_after_s": 0})
    _wait_ready(gateway_platform, key)


def test_a_cold_start_that_cannot_finish_answers_503_with_retry_after_and_the_reason(gateway_platform: Platform):
    key = _make_tenant_with_model(gateway_platform, "nogpu", scopes=["infer", "manage"], gpu_memory_mb=1024)
    base = f"{gateway_platform.base_url}/api/v1/tenants/nogpu/models/{MODEL}/deployment/"
    moved = httpx.patch(base, headers=_bearer(key), json={"device_kind": "cuda"})  # no GPU in this fleet
    assert moved.status_code == 200, moved.text
    time.sleep(1.5)
    started = time.monotonic()
    answer = _infer_json(gateway_platform, key, ONE_ROW)
    waited = time.monotonic() - started
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["retry-after"]) >= 1
    assert "BERTH_GATEWAY_COLD_START_S" in answer.json()["error"]
    assert "no cuda device" in answer.json()["error"]
    assert 14 <= waited < 30


@contextlib.contextmanager
def _a_second_replica(platform: Platform, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A spare worker process and the demo model on two replicas (one on each worker), both
    in the gateway's routing table; yields the spare and its log's path. On the way out the
    spare is killed and the deployment goes back to one replica."""
    key = _demo_key(platform)
    spare_id = f"{platform.worker_id}-spare-{uuid.uuid4().hex[:6]}"  # not a stale registration's id
    spare_log = tmp_path / "spare.log"
    with spare_log.open("wb") as log:
        spare = subprocess.Popen(
            [PYTHON, "-m", "inference_workers", "--device", "cpu", "--worker-id", spare_id],
            cwd=REPO_ROOT,
            env=platform.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"{platform.base_url}/api/v1/tenants/demo/models/{MODEL}/deployment/"
    try:
        deadline = time.monotonic() + 90
        with platform.admin() as admin:
            quota = {"requests_per_second": 100_000, "max_concurrent_requests": 1000}
            assert admin.patch("/api/v1/tenants/demo/quota/", json=quota).status_code == 200
            while not any(
                w["worker_id"] == spare_id and w["state"] == "ready" for w in admin.get("/api/v1/workers/").json()
            ):
                assert time.monotonic() < deadline, "the spare worker never registered"
                time.sleep(0.2)
        assert httpx.patch(base, headers=_bearer(key), json={"min_replicas": 2, "max_replicas": 2}).status_code == 200

        def ready_workers() -> set[str]:
            replicas = httpx.get(base, headers=_bearer(key)).json()["replicas"]
            return {r["worker"] for r in replicas if r["state"] == "ready"}

        while ready_workers() != {platform.worker_id, spare_id}:
            if time.monotonic() > deadline:
                with platform.admin() as admin:
                    workers = [(w["worker_id"], w["state"]) for w in admin.get("/api/v1/workers/").json()]
                replicas = httpx.get(base, headers=_bearer(key)).json()["replicas"]
                raise AssertionError((workers, [(r["index"], r["worker"], r["state"], r["reason"]) for r in replicas]))
            time.sleep(0.2)
        time.sleep(1.0)  # both replicas are in the gateway's routing table
        yield spare, spare_log
    finally:
        if spare.poll() is None:
            spare.send_signal(signal.SIGCONT)  # a test that stopped it
            spare.kill()
        spare.wait()
        httpx.patch(base, headers=_bearer(key), json={"min_replicas": 1, "max_replicas": 1})


def test_requests_go_around_a_replica_that_holds_its_requests(gateway_platform: Platform, tmp_path: Path):
    """Least outstanding requests, end to end: with one of two replicas frozen (its requests
    held), the gateway sends new ones to the other, so the clients keep being answered. With
    a random choice each client would be stuck on the frozen one after a request or two."""
    key = _demo_key(gateway_platform)
    clients = 8
    with _a_second_replica(gateway_platform, tmp_path) as (spare, _):
        spare.send_signal(signal.SIGSTOP)
        thaw_at = time.monotonic() + 3.0  # longer than the module's 2 s timeout: one held wave ends in 504

        def client_loop(_: int) -> list[tuple[int, float]]:
            seen = []
            with httpx.Client(timeout=30) as client:
                while (sent_at := time.monotonic()) < thaw_at:
                    answer = client.post(
                        f"{gateway_platform.base_url}/v2/models/{MODEL}/infer", json=ONE_ROW, headers=_bearer(key)
                    )
                    seen.append((answer.status_code, time.monotonic() - sent_at))
            return seen

        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            futures = [pool.submit(client_loop, n) for n in range(clients)]
            time.sleep(max(0.0, thaw_at - time.monotonic()))
            spare.send_signal(signal.SIGCONT)
            results = [item for future in futures for item in future.result()]
        codes = collections.Counter(code for code, _ in results)
        assert set(codes) <= {200, 504}, codes
        # The frozen replica is chosen only while it has no more requests out than the live
        # one, so it holds at most half the clients and one more (ties go to the first drawn);
        # those of the first wave reach the 2 s timeout (504), a second wave is thawed first.
        assert codes[504] <= clients // 2 + 1, codes
        answered_quickly = sum(1 for code, took in results if code == 200 and took < 1.0)
        assert answered_quickly > 150, (answered_quickly, codes)
        # Thawed, the spare answers again: requests reach both replicas and all are 200.
        after = [_infer_json(gateway_platform, key, ONE_ROW).status_code for _ in range(20)]
        assert after == [200] * 20


def test_a_replica_whose_worker_is_gone_is_retried_once_on_the_other(gateway_platform: Platform, tmp_path: Path):
    """A connection failure before anything was sent (the spare killed while idle, so its
    replica is still in the routing table and a new connection to it is refused) is retried
    on the other replica: every request is answered, and the retries are counted."""
    key = _demo_key(gateway_platform)
    retries_before = gateway_platform.metric("berth_gateway_retries_total", tenant="demo", model=MODEL)
    with _a_second_replica(gateway_platform, tmp_path) as (spare, _):
        spare.send_signal(signal.SIGKILL)
        spare.wait(timeout=10)
        time.sleep(0.3)  # the gateway's pooled connections to it have seen it close
        # Each request picks the dead replica half the time until one fails to connect there
        # (the gateway then sets its worker aside): 30 requests all but surely try it.
        answers = [_infer_json(gateway_platform, key, ONE_ROW) for _ in range(30)]
        assert [a.status_code for a in answers] == [200] * 30, [a.text for a in answers if a.status_code != 200]
        retries = gateway_platform.metric("berth_gateway_retries_total", tenant="demo", model=MODEL)
        assert retries >= retries_before + 1


def test_a_worker_killed_under_load_loses_nothing_silently(gateway_platform: Platform, tmp_path: Path):
    key = _demo_key(gateway_platform)
    retries_before = gateway_platform.metric("berth_gateway_retries_total", tenant="demo", model=MODEL)
    with _a_second_replica(gateway_platform, tmp_path) as (spare, spare_log):
        stop_at = time.monotonic() + 6

        def client_loop(worker: int) -> list[tuple[int, str, str, float]]:
            seen = []
            with httpx.Client(timeout=30) as client:
                while time.monotonic() < stop_at:
                    request_id = f"w{worker}-{uuid.uuid4().hex}"  # 8 hex digits collided once in ~8,500
                    body = {"id": request_id, **ONE_ROW}
                    sent_at = time.monotonic()
                    answer = client.post(
                        f"{gateway_platform.base_url}/v2/models/{MODEL}/infer",
                        json=body,
                        headers={**_bearer(key), "X-Request-ID": request_id},
                    )
                    seen.append((answer.status_code, request_id, answer.text, sent_at))
            return seen

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(client_loop, n) for n in range(4)]
            time.sleep(2)
            spare.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            results = [item for future in futures for item in future.result()]
        codes = [code for code, _, _, _ in results]
        assert set(codes) <= {200, 502}, {c for c in codes if c not in (200, 502)}
        assert codes.count(502) <= 4, "more failures than requests in flight at the kill"
        for code, request_id, text, _ in results:
            if code == 200:
                assert json.loads(text)["id"] == request_id
            else:
                assert "not retried" in json.loads(text)["error"]
        # Requests sent after the kill reach the surviving worker (retried there on connect failure).
        after = [code for code, _, _, sent_at in results if sent_at > killed_at + 0.2]
        assert len(after) > 20 and set(after) == {200}, after
        # The gateway noticed the dead worker: requests it had in flight there broke (502, and it
        # was left out of routing), or a connection to it failed and was retried on the live one.
        retries = gateway_platform.metric("berth_gateway_retries_total", tenant="demo", model=MODEL)
        assert codes.count(502) > 0 or retries > retries_before
        # Each worker logs a request as it answers it (before the answer leaves), naming the
        # X-Request-ID the gateway forwarded: every 200 ran exactly once, nothing ran twice.
        spare.wait(timeout=10)

        def logged_now() -> str:
            return spare_log.read_text(errors="replace") + gateway_platform.log()

        answered = [f"request={request_id}" for code, request_id, _, _ in results if code == 200]
        logged = _wait_logged(logged_now, *answered)
        executions = collections.Counter(re.findall(r"/infer 200 request=(w\d-[0-9a-f]{32})\b", logged))
        assert executions and max(executions.values()) == 1, executions.most_common(3)
        for code, request_id, _, _ in results:  # a 502 may have run just before the kill, once at most
            assert executions[request_id] == 1 if code == 200 else executions[request_id] <= 1, (code, request_id)
