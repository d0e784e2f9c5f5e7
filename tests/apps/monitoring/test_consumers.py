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
