"""An asyncio event loop on its own thread, for the data plane beside Celery's threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (it comes with uvicorn[standard]): its sockets and callbacks cost
    a fraction of asyncio's on the data plane's hot path; asyncio's loop otherwise."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is in the pins
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class EventLoopThread:
    """Runs one event loop forever on a daemon thread; ``run`` hands it coroutines."""

    def __init__(self, name: str = "berth-dataplane") -> None:
        self.loop = _new_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._started = threading.Event()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()
        self.loop.close()

    def start(self) -> EventLoopThread:
        """Starts the thread and waits until the loop runs."""
        self._thread.start()
        self._started.wait(timeout=10)
        return self

    def run(self, coroutine: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        """Runs a coroutine on the loop from another thread and returns its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=timeout)

    def stop(self) -> None:
        """Stops the loop and joins the thread."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
