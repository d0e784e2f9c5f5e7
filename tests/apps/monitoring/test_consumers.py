import pytest
from channels.testing import WebsocketCommunicator

from control_plane.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


async def test_anonymous_socket_is_closed():
    communicator = WebsocketCommunicator(application, "/ws/health/", headers=[(b"origin", b"http://127.0.0.1")])
    connected, code = await communicator.connect()
    assert not connected
    assert code == 4401
    await communicator.disconnect()


async def test_signed_in_user_is_greeted(staff_user):
    from asgiref.sync import sync_to_async
    from django.test import Client

    browser = Client()
    await sync_to_async(browser.force_login)(staff_user)
    cookie = browser.cookies["sessionid"].value
    communicator = WebsocketCommunicator(
        application,
        "/ws/health/",
        headers=[(b"origin", b"http://127.0.0.1"), (b"cookie", f"sessionid={cookie}".encode())],
    )
    connected, _ = await communicator.connect()
    assert connected
    assert await communicator.receive_json_from() == {"type": "health.ok", "user": "operator"}
    await communicator.disconnect()


async def test_foreign_origin_is_refused():
    communicator = WebsocketCommunicator(application, "/ws/health/", headers=[(b"origin", b"http://evil.example")])
    connected, _ = await communicator.connect()
    assert not connected


async def _socket(path: str, user=None) -> WebsocketCommunicator:
    from asgiref.sync import sync_to_async
    from django.test import Client

    headers = [(b"origin", b"http://127.0.0.1")]
    if user is not None:
        browser = Client()
        await sync_to_async(browser.force_login)(user)
        headers.append((b"cookie", f"sessionid={browser.cookies['sessionid'].value}".encode()))
    return WebsocketCommunicator(application, path, headers=headers)


async def test_a_member_gets_history_then_live_points_of_one_model(world_a):
    from asgiref.sync import sync_to_async
    from channels.layers import get_channel_layer

    from apps.monitoring.consumers import tenant_metrics_group
    from apps.monitoring.services import RollupPoint, rollups_record

    await sync_to_async(rollups_record)(
        points=[
            RollupPoint(second=int(__import__("time").time()) - 10, tenant="alpha", model="clf", version=1,
                        requests=4, errors=1, statuses={"200": 3, "400": 1}, latency={40: 4})
        ]
    )  # fmt: skip
    socket = await _socket("/ws/tenants/alpha/metrics/?model=clf", world_a.users["viewer"])
    connected, _ = await socket.connect()
    assert connected
    history = await socket.receive_json_from()
    assert history["type"] == "metrics.history"
    assert [(p["model"], p["requests"], p["errors"]) for p in history["points"]] == [("clf", 4, 1)]
    layer = get_channel_layer()
    point = {"t": "2026-01-01T00:00:00+00:00", "model": "clf", "version": 1, "requests": 1}
    other = {**point, "model": "other"}
    await layer.group_send(
        tenant_metrics_group(world_a.tenant.pk), {"type": "metrics.update", "points": [other, point]}
    )
    update = await socket.receive_json_from()
    assert update == {"type": "metrics.update", "points": [point]}  # only the model asked for
    await socket.disconnect()


async def test_another_tenants_metrics_socket_is_refused_like_a_missing_one(world_a, world_b):
    for path in ("/ws/tenants/bravo/metrics/", "/ws/tenants/no-such-tenant/metrics/"):
        socket = await _socket(path, world_a.users["owner"])
        assert await _closed_with(socket) == 4404, path
    anonymous = await _socket("/ws/tenants/alpha/metrics/")
    assert await _closed_with(anonymous) == 4401


async def _closed_with(socket: WebsocketCommunicator) -> int:
    """Accepted, then closed at once with a code the browser can read; nothing else sent."""
    connected, _ = await socket.connect()
    assert connected
    message = await socket.receive_output(timeout=5)
    assert message["type"] == "websocket.close", message
    await socket.disconnect()
    return int(message["code"])


async def test_the_fleet_socket_is_for_staff_and_shows_each_device_with_its_replicas(staff_user, world_a):
    from asgiref.sync import sync_to_async

    from tests.apps.deployments.factories import WorkerFactory

    await sync_to_async(WorkerFactory.create)(worker_id="gpu-box-0")
    refused = await _socket("/ws/fleet/", world_a.users["owner"])
    assert await _closed_with(refused) == 4404
    socket = await _socket("/ws/fleet/", staff_user)
    connected, _ = await socket.connect()
    assert connected
    update = await socket.receive_json_from(timeout=5)
    assert update["type"] == "fleet.update"
    assert [d["worker"] for d in update["devices"]] == ["gpu-box-0"]
    assert update["devices"][0]["capacity_bytes"] > 0 and update["devices"][0]["replicas"] == []
    await socket.disconnect()


async def test_the_workers_batch_figures_reach_the_socket_within_seconds(world_a, world_b):
    import time

    from asgiref.sync import sync_to_async

    from apps.deployments.services import worker_record_heartbeat
    from inference_workers.types import DeviceState, HostedModel, ModelKey, WorkerHeartbeat

    socket = await _socket("/ws/tenants/alpha/metrics/", world_a.users["viewer"])
    connected, _ = await socket.connect()
    assert connected
    assert (await socket.receive_json_from())["type"] == "metrics.history"

    def beat(tenant: str) -> None:
        now = time.time()
        figures = {"batches": 2, "batch_sizes": {"3": 2}, "queue": {"10": 6}, "compute": {"30": 2}, "compute_s": 0.01,
                   "compute_us": 10_000, "requests": 6}  # fmt: skip
        window = {**figures, "seconds": [{"second": int(now), **figures}]}
        hosted = HostedModel(key=ModelKey(tenant, "clf", 1), state="ready", reserved_bytes=1, measured_bytes=1,
                             window=window)  # fmt: skip
        device = DeviceState(kind="cpu", index=0, name="cpu", uuid="", total_bytes=10, used_bytes=1, free_bytes=9)
        worker_record_heartbeat(
            heartbeat=WorkerHeartbeat(worker_id=f"w-{tenant}", host="h", dataplane_url="http://127.0.0.1:1",
                                      queue="q", state="ready", sent_at=now, device=device, models=(hosted,))
        )  # fmt: skip

    await sync_to_async(beat)("bravo")  # another tenant's worker figures never show here
    await sync_to_async(beat)("alpha")
    update = await socket.receive_json_from(timeout=4)
    assert update["type"] == "metrics.update"
    (point,) = update["points"]
    assert point["model"] == "clf" and point["batches"] == 2 and point["requests"] == 0
    assert point["queue"] == {"10": 6} and point["compute_p50_ms"] is not None
    await socket.disconnect()
