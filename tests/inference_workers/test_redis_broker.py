"""Berth's Redis transport against a real redis-server: kombu's behaviour while the broker is
up, and a consumer that closes cleanly after losing it in the middle of a message.

The crash it prevents (Celery's consumer ending the worker on an AttributeError) needs
Celery's event loop to reach: the worker-process test restarting the broker in the middle
of a load reproduces it, and fails without this transport."""

from __future__ import annotations

import logging
import queue as stdlib_queue

import pytest
from kombu import Connection

from inference_workers import redis_broker
from inference_workers.broker import broker_config
from tests.inference_workers.redis_server import RedisServer, needs_redis_server

pytestmark = needs_redis_server


@pytest.fixture
def server(tmp_path):
    running = RedisServer(tmp_path / "redis")
    yield running
    running.stop()


def test_both_planes_get_it_for_redis_urls(tmp_path):
    broker_config(url="redis://127.0.0.1:1/0", data_dir=tmp_path)  # what both planes' settings call
    for scheme in ("redis", "rediss"):
        connection = Connection(f"{scheme}://127.0.0.1:1/0")
        assert connection.transport_cls == scheme  # the name kombu keys TLS defaults on stays
        assert isinstance(connection.transport, redis_broker.Transport)


def test_while_the_broker_is_up_it_acknowledges_and_puts_back_as_kombu_does(server):
    with Connection(server.url) as connection:
        commands = connection.SimpleQueue("commands")
        commands.put({"n": 1})
        commands.put({"n": 2})
        first = commands.get(timeout=5)
        first.ack()
        second = commands.get(timeout=5)  # delivered, never acknowledged
        assert second.payload == {"n": 2}
        assert server.client().hlen("unacked") == 1
    # Closing the connection put the unacknowledged message back; the acknowledged one is gone.
    assert server.client().hlen("unacked") == 0
    with Connection(server.url) as connection:
        commands = connection.SimpleQueue("commands")
        again = commands.get(timeout=5)
        assert again.payload == {"n": 2}
        again.ack()
        with pytest.raises(stdlib_queue.Empty):
            commands.get(timeout=0.2)


def test_a_consumer_that_lost_its_broker_mid_message_closes_and_lets_it_go(server, caplog):
    """What Celery does on a connection error (collect, then close) does not raise, says what
    it let go of, and a command finishing afterwards is let go of too, not acknowledged
    through a connection that is gone."""
    caplog.set_level(logging.INFO, logger=redis_broker.__name__)
    connection = Connection(server.url)
    commands = connection.SimpleQueue("commands")
    commands.put({"load": "m"})
    message = commands.get(timeout=5)
    assert server.client().hlen("unacked") == 1
    server.stop()
    connection.collect()  # Celery's consumer, seeing the connection error
    connection.close()  # then closes it: the channel would put the message back here
    assert "1 unacknowledged message(s) not put back" in caplog.text
    message.ack()  # the command ran to its end after the connection was gone
    assert f"message {message.delivery_tag} finished after its broker connection was lost" in caplog.text


def test_a_channel_closed_while_the_broker_is_down_says_so_and_closes(server, caplog):
    """Closed without being collected first (the broker went away, the connection object is
    still whole): putting the message back fails on the connection, and the close goes on."""
    caplog.set_level(logging.WARNING, logger=redis_broker.__name__)
    connection = Connection(server.url)
    commands = connection.SimpleQueue("commands")
    commands.put({"load": "m"})
    commands.get(timeout=5)
    channel = commands.consumer.channel
    assert isinstance(channel, redis_broker.Channel)
    server.stop()
    channel.close()
    assert channel.closed
    assert "not put back, the broker is unreachable" in caplog.text
    connection.collect()
