"""kombu's Redis transport, with a channel that survives closing after its broker is gone.

Every Berth process consumes with late acknowledgement: a command (a load, a validation)
stays unacknowledged while it runs. When the broker goes away in the meantime, Celery's
consumer collects the dead connection and then closes it; closing the channel makes kombu
(5.7) put the unacknowledged message back through that connection, which no longer has the
client its pool is built from. The ``AttributeError`` that follows is not a connection
error, so Celery calls it unrecoverable and the worker exits, data plane and all. The
message stays delivered to this process either way: the command runs to its end here, and
its result reaches the control plane with the next heartbeat.

Here a channel whose broker is unreachable, or whose connection is already collected, does
not put unacknowledged messages back or acknowledge them: it says so in the log and lets
the close go on. A broker that kept its data still holds its own copy of each such message
(kombu's ``unacked`` hash) and delivers it again after the visibility timeout; the commands
are idempotent. A broker restarted empty has none, which is why the command finishing here
is what counts.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, redis

log = logging.getLogger(__name__)

SCHEMES = ("redis", "rediss")


class QoS(redis.QoS):
    """Restores and acknowledges through the broker while there is one to reach."""

    def _collected(self) -> bool:
        """Whether the channel's connection is gone: closed, or collected after a broker loss."""
        transport = self.channel.connection
        return transport is None or transport.client is None

    def restore_unacked(self, client: Any = None) -> None:
        """Puts unacknowledged messages back on their queues, or says why it cannot."""
        if client is None and self._collected():
            self._let_go("the connection to the broker is already closed")
            return
        errors: tuple[type[BaseException], ...] = getattr(self.channel, "connection_errors", ())
        try:
            super().restore_unacked(client)
        except errors as exc:
            self._let_go(f"the broker is unreachable ({exc})")

    def ack(self, delivery_tag: Any) -> None:
        """Acknowledges a message; one whose connection is gone is let go of (see the module)."""
        if self._collected():
            log.info(
                "message %s finished after its broker connection was lost: not acknowledged; a broker "
                "that kept it delivers it again after the visibility timeout (commands are idempotent)",
                delivery_tag,
            )
            if self._delivered is not None:
                self._delivered.pop(delivery_tag, None)
            return
        super().ack(delivery_tag)

    def _let_go(self, why: str) -> None:
        if not self._delivered:
            return
        log.warning(
            "%d unacknowledged message(s) not put back, %s: each one still runs to its end here, "
            "and a broker that kept its copy delivers it again after the visibility timeout",
            len(self._delivered),
            why,
        )
        self._delivered.clear()


class Channel(redis.Channel):
    """kombu's Redis channel with the QoS above."""

    QoS = QoS


class Transport(redis.Transport):
    """kombu's Redis transport with the channel above."""

    Channel = Channel


def register() -> None:
    """Makes ``redis://`` and ``rediss://`` use this transport in this process (idempotent)."""
    for scheme in SCHEMES:
        TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
