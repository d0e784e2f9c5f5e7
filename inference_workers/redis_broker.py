"""kombu's Redis transport, with a channel that outlives the connection it was made on.

Every Berth process consumes with late acknowledgement: a command (a load, an unload, a
validation) stays unacknowledged while it runs. When the broker goes away in the meantime,
Celery's consumer collects the dead connection (kombu drops the transport's ``client``)
and then closes it. With kombu 5.7's own transport, closing the channel puts the
unacknowledged message back through that connection, whose pool is built from the
``client`` that is gone: an ``AttributeError``, which is not a connection error, so Celery
calls it unrecoverable and the worker exits, data plane and all. The same happens to an
acknowledgement (or a rejection) of a command that finishes after the collection.

Here the channel keeps the connection parameters it was made with, so that:

- closing a collected channel does not put its unacknowledged messages back: each is still
  running in this process (putting it back would run it twice), and it is acknowledged when
  it ends. A channel closed while its connection is whole puts them back as kombu does; if
  the broker is unreachable then, it says how many it lets go of instead of raising.
- a command ending after the collection is acknowledged (or rejected) through the
  parameters kept, on a connection of its own, so a broker that is back, or never lost its
  data (a network blip), does not deliver it again. If the broker is still unreachable,
  the acknowledgement is let go of with a log line: a broker that kept its data then
  delivers the command again after kombu's visibility timeout (an hour by default), and
  the command runs again (they are idempotent; the control plane's reconcile undoes a
  stale load). A broker restarted empty has no copy to deliver.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import kombu.transport
import redis as redis_py
from kombu.transport import TRANSPORT_ALIASES, redis, virtual

log = logging.getLogger(__name__)

SCHEMES = ("redis", "rediss")
# What an unreachable broker raises here (kombu's own list also holds KeyError and the like,
# which would hide real bugs as "broker unreachable").
BROKER_ERRORS = (redis_py.exceptions.ConnectionError, redis_py.exceptions.TimeoutError, OSError)


class QoS(redis.QoS):
    """kombu's Redis QoS, for a channel whose connection may have been collected."""

    channel: Channel

    def restore_unacked(self, client: Any = None) -> None:
        """Puts unacknowledged messages back on their queues, unless they are still running
        here (the connection was collected) or the broker cannot be reached."""
        if client is None and self.channel.collected:
            self._let_go("their connection to the broker was collected; each is still running here")
            return
        try:
            super().restore_unacked(client)
        except BROKER_ERRORS as exc:
            self._let_go(f"the broker is unreachable ({exc}); some may have been put back before that")

    def ack(self, delivery_tag: Any) -> None:
        """Acknowledges a message (through the kept parameters on a collected channel)."""
        self._answer(super().ack, "acknowledged", delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        """Rejects (or requeues) a message (through the kept parameters on a collected channel)."""
        answer = functools.partial(super().reject, requeue=requeue)
        self._answer(answer, "requeued" if requeue else "rejected", delivery_tag)

    def _answer(self, answer: Callable[[Any], None], what: str, delivery_tag: Any) -> None:
        """Tells the broker what became of a message: as kombu does on a whole connection; on a
        collected one through the kept parameters, letting go if the broker is unreachable."""
        if not self.channel.collected:
            answer(delivery_tag)
            return
        try:
            answer(delivery_tag)
        except BROKER_ERRORS as exc:
            self._gone_unanswered(what, delivery_tag, exc)
        finally:
            self.channel.release_pools()

    def _gone_unanswered(self, what: str, delivery_tag: Any, exc: BaseException) -> None:
        log.warning(
            "message %s finished after its broker connection was lost and could not be %s (%s): a broker "
            "that kept it delivers it again after the visibility timeout (commands are idempotent)",
            delivery_tag,
            what,
            exc,
        )
        virtual.QoS.ack(self, delivery_tag)  # this process is done with it

    def _let_go(self, why: str) -> None:
        if not self._delivered:
            return
        log.warning("%d unacknowledged message(s) not put back: %s", len(self._delivered), why)
        self._delivered.clear()


class Channel(redis.Channel):
    """kombu's Redis channel, keeping the parameters of the connection it was made on."""

    QoS = QoS
    _kept_params: dict[str, Any] | None = None

    @property
    def collected(self) -> bool:
        """Whether the connection this channel was made on is gone (collected or closed)."""
        transport = self.connection
        return transport is None or transport.client is None

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if not self.collected:
            params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]  # kombu's stubs lack it
            if not asynchronous:
                self._kept_params = dict(params)
            return params
        if self._kept_params is None or asynchronous:
            raise redis_py.exceptions.ConnectionError("the connection to the broker was collected")
        return dict(self._kept_params)

    def release_pools(self) -> None:
        """Disconnects the pools a collected channel opened to answer for a message."""
        self._disconnect_pools()  # type: ignore[attr-defined]  # kombu's stubs lack it


class Transport(redis.Transport):
    """kombu's Redis transport with the channel above."""

    Channel = Channel


def register() -> None:
    """Makes ``redis://`` and ``rediss://`` use this transport in this process (idempotent)."""
    for scheme in SCHEMES:
        TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
        # A lookup made before this would keep kombu's (its cache is not in the type stubs).
        getattr(kombu.transport, "_transport_cache", {}).pop(scheme, None)
