"""The ASGI entry sends /v2 to the gateway and everything else to Django."""

import httpx
import pytest

from control_plane.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def client():
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        yield http
    # The gateway's background reads end before the database is flushed for the next test.
    await application.application_mapping["http"].gateway.close()


async def test_v2_server_metadata_comes_from_the_gateway(client):
    response = await client.get("/v2")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "berth"
    assert isinstance(body["extensions"], list)
    # The gateway runs no Django middleware: no CSRF/session/clickjacking headers.
    assert "x-frame-options" not in response.headers


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready"])
async def test_v2_health_routes(client, path):
    response = await client.get(path)
    assert response.status_code == 200


async def test_v2_unknown_route_is_a_json_404(client):
    response = await client.get("/v2/nothing/here")
    assert response.status_code == 404
    assert "GET /v2" in response.json()["error"]


async def test_v2_wrong_method_is_405(client):
    response = await client.post("/v2/health/live")
    assert response.status_code == 405
    assert "GET" in response.json()["error"]


async def test_everything_else_goes_to_django(client):
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    # Django's middleware ran on this one.
    assert response.headers.get("x-frame-options") == "DENY"


async def test_a_path_that_only_starts_with_v2_is_not_the_gateway(client):
    response = await client.get("/v2x")
    assert response.status_code == 404
    assert "application/json" not in response.headers.get("content-type", "")


async def test_closing_the_gateway_ends_its_background_work(client):
    assert (await client.get("/v2/health/ready")).status_code == 200  # the gateway has started
    gateway_app = application.application_mapping["http"].gateway
    gateway = gateway_app.gateway()
    await gateway_app.close()
    assert gateway._loop_task is not None and gateway._loop_task.done()
    with pytest.raises(RuntimeError):  # its database threads are gone, their calls finished
        await gateway.database.run(lambda: None)
