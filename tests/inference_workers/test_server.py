import httpx

from inference_workers.server import DataPlaneServer


def test_dataplane_server_answers_health_on_a_free_port_and_stops():
    ready = {"value": True}
    server = DataPlaneServer(host="127.0.0.1", port=0, is_ready=lambda: ready["value"])
    port = server.start()
    try:
        assert port > 0
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/v2/health/live").json() == {"live": True}
        assert httpx.get(f"{base}/v2/health/ready").status_code == 200
        ready["value"] = False
        response = httpx.get(f"{base}/v2/health/ready")
        assert response.status_code == 503
        assert "draining" in response.json()["error"]
        assert httpx.get(f"{base}/v2").json()["name"] == "berth-worker"
    finally:
        server.stop()
    try:
        httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=1)
        raise AssertionError("the server still answers after stop()")
    except httpx.ConnectError:
        pass
