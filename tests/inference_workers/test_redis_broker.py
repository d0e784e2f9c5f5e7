"""Berth's Redis transport against a real redis-server: kombu's behaviour while the broker is
up, and a consumer that closes cleanly after losing it in the middle of a message.

The crash it prevents (Celery's consumer ending the worker on an AttributeError) needs
Celery's event loop to reach: the worker-process test restarting the broker in the middle
of a load reproduces it, and fails without this transport."""

from __future__ import annotations

import logging
import queue as stdlib_queue
from typing import Any

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


def _delivered_unacknowledged(server: RedisServer) -> tuple[Connection, Any, Any]:
    """A connection, its consumer's channel, and one message it holds unacknowledged."""
    connection = Connection(server.url)
    commands = connection.SimpleQueue("commands")
    commands.put({"load": "m"})
    message = commands.get(timeout=5)
    assert server.client().hlen("unacked") == 1
    channel = commands.consumer.channel
    assert isinstance(channel, redis_broker.Channel)
    return connection, channel, message


def _collect(channel: redis_broker.Channel) -> None:
    """What kombu's ``Connection.collect`` leaves when Celery's consumer calls it after a
    connection error whose cleanup could not reach the broker: the transport without its
    client, the channel still open (``_do_close_transport``)."""
    channel.connection.client = None
    assert channel.collected


def test_a_collected_channel_lets_go_of_running_messages_and_acknowledges_them_when_they_end(server, caplog):
    """Closing it (Celery's next step) neither raises nor puts back the message still running
    here; its acknowledgement then reaches the broker through the parameters kept."""
    caplog.set_level(logging.INFO, logger=redis_broker.__name__)
    _, channel, message = _delivered_unacknowledged(server)
    _collect(channel)
    channel.close()
    assert "1 unacknowledged message(s) not put back: their connection to the broker was collected" in caplog.text
    assert server.client().llen("commands") == 0  # not delivered again while it runs
    assert server.client().hlen("unacked") == 1
    message.ack()  # the command ended
    assert server.client().hlen("unacked") == 0  # so the broker never delivers it again
    assert server.client().llen("commands") == 0


def test_a_collected_channel_requeues_a_rejected_message_through_the_parameters_kept(server):
    _, channel, message = _delivered_unacknowledged(server)
    _collect(channel)
    message.requeue()
    assert server.client().hlen("unacked") == 0
    assert server.client().llen("commands") == 1


def test_a_message_ending_while_the_broker_is_still_gone_is_let_go_of_with_a_warning(server, caplog):
    caplog.set_level(logging.WARNING, logger=redis_broker.__name__)
    connection, _, message = _delivered_unacknowledged(server)
    server.stop()
    connection.collect()  # Celery's consumer, seeing the connection error
    connection.close()  # then closes it
    message.ack()  # the command ran to its end meanwhile; no broker to tell
    assert f"message {message.delivery_tag} finished after its broker connection was lost" in caplog.text
    assert "could not be acknowledged" in caplog.text


def test_a_channel_closed_while_the_broker_is_down_says_so_and_closes(server, caplog):
    """Closed with its connection whole but the broker gone: putting the message back fails
    on the connection, and the close goes on."""
    caplog.set_level(logging.WARNING, logger=redis_broker.__name__)
    connection, channel, _ = _delivered_unacknowledged(server)
    server.stop()
    channel.close()
    assert channel.closed
    assert "1 unacknowledged message(s) not put back: the broker is unreachable" in caplog.text
    connection.collect()
