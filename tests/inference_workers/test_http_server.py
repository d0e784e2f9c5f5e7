"""The worker's HTTP/1.1 server itself, over raw sockets: keep-alive, HTTP/1.0, chunked
bodies, ``Expect: 100-continue``, pipelining, limits, malformed requests, a client that
leaves while its request waits in the queue."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from inference_workers import server as http_server
from inference_workers.dataplane import DataPlane
from inference_workers.server import DataPlaneServer, build_app
from inference_workers.types import BatchingConfig
from tests.inference_workers.conftest import load_command

TOKEN = "test-worker-token"
LIMIT = 64 * 1024
BODY = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).encode()
INFER = "/v2/models/acme.doubler/infer"


@pytest.fixture
def worker(make_host, loop_thread, model_files):
    host = make_host()
    host.load(load_command(model_files["doubler"], model="doubler", version=1))
    # A request for this model waits up to 3 s in the queue for company before it runs.
    host.load(
        load_command(
            model_files["doubler"],
            model="waiter",
            batching=BatchingConfig(max_batch_size=8, max_queue_delay_us=3_000_000),
        )
    )
    app = build_app(DataPlane(host, is_draining=lambda: False), token=TOKEN, max_body_bytes=LIMIT, metrics=host.metrics)
    server = DataPlaneServer(app, host="127.0.0.1", port=0, loop=loop_thread)
    port = server.start()
    yield {"port": port, "url": f"http://127.0.0.1:{port}", "host": host}
    server.stop()


def connect(worker) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", worker["port"]), timeout=10)
    return sock


def request(
    path: str = INFER, body: bytes = BODY, *, method: str = "POST", version: str = "1.1", extra: str = ""
) -> bytes:
    head = (
        f"{method} {path} HTTP/{version}\r\nHost: worker\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    """Reads one Content-Length response from ``sock`` (``buffer`` keeps what follows it)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response head")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a response body")
        rest += chunk
    buffer[:] = rest[length:]
    return status, headers, rest[:length]


def closed(sock: socket.socket) -> bool:
    """True when the server closed the connection (EOF or reset)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_one_connection_carries_many_requests(worker):
    with connect(worker) as sock:
        buffer = bytearray()
        for _ in range(5):
            sock.sendall(request())
            status, headers, body = read_response(sock, buffer)
            assert status == 200 and "connection" not in headers
            assert json.loads(body)["outputs"][0]["data"] == [2, 4, 6, 8]


def test_pipelined_requests_are_answered_in_order(worker):
    paths = [INFER, "/v2/health/live", "/v2/models/acme.doubler/versions/9", INFER]
    with connect(worker) as sock:
        sock.sendall(
            b"".join(
                request(path, method="GET" if "infer" not in path else "POST", body=BODY if "infer" in path else b"")
                for path in paths
            )
        )
        buffer = bytearray()
        statuses = [read_response(sock, buffer)[0] for _ in paths]
    assert statuses == [200, 200, 404, 200]


def test_connection_close_and_http_1_0_end_the_connection(worker):
    for raw in (request(extra="Connection: close\r\n"), request(version="1.0")):
        with connect(worker) as sock:
            sock.sendall(raw)
            status, headers, _ = read_response(sock, bytearray())
            assert status == 200 and headers["connection"] == "close"
            assert closed(sock)


def test_chunked_bodies_are_read(worker):
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (BODY[:10], BODY[10:])) + b"0\r\n\r\n"
    head = (
        f"POST {INFER} HTTP/1.1\r\nHost: w\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    with connect(worker) as sock:
        sock.sendall(head + chunked)
        status, _, body = read_response(sock, bytearray())
    assert status == 200 and json.loads(body)["outputs"][0]["data"] == [2, 4, 6, 8]


def test_expect_100_continue_is_answered_before_the_body(worker):
    head = request(extra="Expect: 100-continue\r\n")[: -len(BODY)]
    with connect(worker) as sock:
        sock.sendall(head)
        interim = sock.recv(1024)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(BODY)
        status, _, _ = read_response(sock, bytearray(interim[len(b"HTTP/1.1 100 Continue\r\n\r\n") :]))
    assert status == 200


def test_a_body_over_the_limit_is_refused_before_it_is_read(worker):
    head = f"POST {INFER} HTTP/1.1\r\nHost: w\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {10 * LIMIT}\r\n\r\n"
    with connect(worker) as sock:
        sock.sendall(head.encode())  # the head alone: the answer comes before any body byte
        status, headers, body = read_response(sock, bytearray())
        assert status == 413 and headers["connection"] == "close"
        assert f"at most {LIMIT}" in json.loads(body)["error"]
        assert closed(sock)


def test_a_chunked_body_over_the_limit_is_413(worker):
    head = f"POST {INFER} HTTP/1.1\r\nHost: w\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
    part = b"x" * 16384
    with connect(worker) as sock:
        sock.sendall(head.encode())
        buffer = bytearray()
        for _ in range(LIMIT // len(part) + 2):
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            except (BrokenPipeError, ConnectionResetError):
                break
        status, _, body = read_response(sock, buffer)
    assert status == 413 and "limit" in json.loads(body)["error"]


def test_an_oversized_head_is_431(worker):
    with connect(worker) as sock:
        sock.sendall(request(extra=f"X-Padding: {'a' * (http_server.MAX_HEAD_BYTES + 10)}\r\n"))
        status, headers, _ = read_response(sock, bytearray())
    assert status == 431 and headers["connection"] == "close"


@pytest.mark.parametrize(
    "garbage",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"POST /v2 HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost\r\n\r\n",
    ],
)
def test_malformed_requests_are_400_and_closed(worker, garbage):
    with connect(worker) as sock:
        sock.sendall(garbage)
        status, headers, body = read_response(sock, bytearray())
        assert status == 400 and headers["connection"] == "close"
        assert "malformed" in json.loads(body)["error"]
        assert closed(sock)


def test_wrong_methods_and_unknown_paths(worker):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    wrong = httpx.get(worker["url"] + INFER, headers=auth)
    assert wrong.status_code == 405 and "POST" in wrong.json()["error"] and "POST" in wrong.headers["allow"]
    assert httpx.post(worker["url"] + "/v2/health/live", content=b"").status_code == 405
    for path in ("/", "/v3", "/v2/models", "/v2/models/acme.doubler/infer/more", "/v2/other"):
        response = httpx.get(worker["url"] + path, headers=auth)
        assert response.status_code == 404, path
        assert "error" in response.json()
        assert httpx.get(worker["url"] + path).status_code == 401, path  # without the token: 401 first
    # A percent-encoded name is decoded like any other path segment.
    assert httpx.post(worker["url"] + "/v2/models/acme%2Edoubler/infer", content=BODY, headers=auth).status_code == 200


def test_a_request_whose_client_left_is_dropped_before_it_runs(worker):
    host = worker["host"]
    path = "/v2/models/acme.waiter/infer"
    with connect(worker) as sock:
        sock.sendall(request(path))
        deadline = time.monotonic() + 5
        while host.resolve("acme.waiter", None).batcher.queue_depth == 0:  # it is queued
            assert time.monotonic() < deadline
            time.sleep(0.01)
    deadline = time.monotonic() + 5
    while host.resolve("acme.waiter", None).batcher.inflight:
        assert time.monotonic() < deadline, "the abandoned request is still waiting"
        time.sleep(0.01)
    text = httpx.get(worker["url"] + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    executed = [
        line for line in text.splitlines() if line.startswith("berth_worker_batch_size_count") and "waiter" in line
    ]
    assert executed == [] or executed[0].endswith(" 0.0")
    # The model still serves the next caller (who waits out the queue delay alone).
    answered = httpx.post(worker["url"] + path, content=BODY, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert answered.status_code == 200


def test_stop_closes_open_connections(make_host, loop_thread, model_files):
    host = make_host()
    host.load(load_command(model_files["doubler"], model="doubler", version=1))
    app = build_app(DataPlane(host, is_draining=lambda: False), token=TOKEN, max_body_bytes=LIMIT, metrics=host.metrics)
    server = DataPlaneServer(app, host="127.0.0.1", port=0, loop=loop_thread)
    port = server.start()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request())
        assert read_response(sock, bytearray())[0] == 200
        server.stop()
        assert closed(sock)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_bodies_are_inflated(worker, encoding):
    import gzip
    import zlib

    packed = gzip.compress(BODY) if encoding == "gzip" else zlib.compress(BODY)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Encoding": encoding}
    response = httpx.post(worker["url"] + INFER, content=packed, headers=headers)
    assert response.status_code == 200
    assert response.json()["outputs"][0]["data"] == [2, 4, 6, 8]


def test_bad_compressed_bodies_get_clear_errors(worker):
    import gzip

    auth = {"Authorization": f"Bearer {TOKEN}"}
    packed = gzip.compress(BODY)
    cases = [
        ({"Content-Encoding": "br"}, packed, 415, "not supported"),
        ({"Content-Encoding": "gzip"}, b"not gzip at all", 400, "not valid gzip"),
        ({"Content-Encoding": "gzip"}, packed[:-12], 400, "cut short"),
        # 10 KiB of gzip that inflates to 10 MiB: inflating stops at the limit.
        ({"Content-Encoding": "gzip"}, gzip.compress(b"\0" * (10 * 1024 * 1024)), 413, "inflates past"),
    ]
    for headers, body, status, complaint in cases:
        response = httpx.post(worker["url"] + INFER, content=body, headers={**auth, **headers})
        assert response.status_code == status, headers
        assert complaint in response.json()["error"]


def test_each_answer_has_one_content_type_and_one_length(worker):
    binary_request = json.dumps(
        {
            "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    ).encode()
    with connect(worker) as sock:
        for body, wanted in ((BODY, "application/json"), (binary_request, "application/octet-stream")):
            sock.sendall(request(body=body))
            buffer = bytearray()
            while b"\r\n\r\n" not in buffer:
                buffer += sock.recv(65536)
            head = bytes(buffer).split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
            types = [line for line in head.split("\r\n") if line.startswith("content-type:")]
            lengths = [line for line in head.split("\r\n") if line.startswith("content-length:")]
            assert types == [f"content-type: {wanted}"] and len(lengths) == 1, head
            read_response(sock, buffer)  # the rest of this answer


def _load_raiser(worker, model_files) -> None:
    """Loads ``acme.raiser`` (raises when a row sums over 1000), one request per execution, so
    a good request never shares a bad one's batch."""
    from tests.inference_workers import models

    inputs, outputs = models.doubler_specs()
    worker["host"].load(
        load_command(
            model_files["raiser"],
            model="raiser",
            model_format="torchscript",
            inputs=inputs,
            outputs=outputs,
            batching=BatchingConfig(max_batch_size=1),
        )
    )


def test_a_model_that_raises_fails_only_its_own_requests_over_http(worker, model_files):
    import concurrent.futures

    _load_raiser(worker, model_files)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def call(model: str, value: float) -> httpx.Response:
        body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [value] * 4}]}
        return httpx.post(f"{worker['url']}/v2/models/acme.{model}/infer", json=body, headers=auth, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        bad = [pool.submit(call, "raiser", 500.0) for _ in range(12)]  # sum 2000: the model raises
        good = [pool.submit(call, "doubler", 1.0) for _ in range(12)]  # at the same time, beside it
        fine = [pool.submit(call, "raiser", 1.0) for _ in range(4)]
    for answer in (future.result() for future in bad):
        assert answer.status_code == 500 and "sum over 1000" in answer.json()["error"]
    for answer in (future.result() for future in good):
        assert answer.status_code == 200 and answer.json()["outputs"][0]["data"] == [2.0] * 4
    for answer in (future.result() for future in fine):
        assert answer.status_code == 200  # its own good requests still run


def test_the_gateways_request_id_is_echoed_and_named_in_the_log_of_a_failure(worker, model_files, caplog):
    _load_raiser(worker, model_files)
    bad = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [500] * 4}]})
    with connect(worker) as sock, caplog.at_level("WARNING", logger="inference_workers.server"):
        buffer = bytearray()
        sock.sendall(request(extra="X-Request-ID: trace-42.a\r\n"))
        status, headers, _ = read_response(sock, buffer)
        assert status == 200 and headers["x-request-id"] == "trace-42.a"
        sock.sendall(request(body=b"{", extra="X-Request-ID: trace-43\r\n"))
        status, headers, _ = read_response(sock, buffer)
        assert status == 400 and headers["x-request-id"] == "trace-43"
        sock.sendall(request(extra="X-Request-ID: two words\r\n"))  # not the gateway's shape: not echoed
        status, headers, _ = read_response(sock, buffer)
        assert status == 200 and "x-request-id" not in headers
        sock.sendall(request("/v2/models/acme.raiser/infer", bad.encode(), extra="X-Request-ID: trace-44\r\n"))
        status, headers, _ = read_response(sock, buffer)
        assert status == 500 and headers["x-request-id"] == "trace-44"
    failures = [record.getMessage() for record in caplog.records if "trace-44" in record.getMessage()]
    assert len(failures) == 1 and "500" in failures[0] and "sum over 1000" in failures[0], caplog.text
    assert "trace-42.a" not in caplog.text  # answered requests are not logged one by one
