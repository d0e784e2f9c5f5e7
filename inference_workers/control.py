"""The worker's control channel: its Celery app, the bootstep, and the heartbeat.

The inference worker is a Celery worker consuming its own queue (``worker.<id>``).
A bootstep starts, in the same process, the device handle and the data-plane server,
and a thread that sends a heartbeat to the control plane's queue every few seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery, bootsteps
from kombu.exceptions import OperationalError

from inference_workers.devices import Device, open_device
from inference_workers.server import DataPlaneServer
from inference_workers.settings import WorkerSettings
from inference_workers.types import HEARTBEAT_TASK, WorkerHeartbeat, WorkerState

log = logging.getLogger(__name__)


class WorkerRuntime:
    """Everything the worker runs beside its Celery consumer."""

    def __init__(self, settings: WorkerSettings, app: Celery) -> None:
        self.settings = settings
        self._app = app
        self._device: Device | None = None
        self._server: DataPlaneServer | None = None
        self._stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self.state: WorkerState = "ready"

    @property
    def dataplane_url(self) -> str:
        """The base URL the gateway reaches this worker's data plane on."""
        port = self._server.port if self._server else 0
        host = self.settings.advertise_host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    def start(self) -> None:
        """Opens the device, starts the data plane, and begins heartbeats."""
        self._device = open_device(self.settings.device, memory_budget_bytes=self.settings.memory_budget_bytes)
        self._server = DataPlaneServer(
            host=self.settings.bind_host, port=self.settings.port, is_ready=lambda: self.state == "ready"
        )
        self._server.start()
        log.info("worker %s serving on %s", self.settings.worker_id, self.dataplane_url)
        self._heartbeat_thread = threading.Thread(target=self._heartbeat_loop, name="berth-heartbeat", daemon=True)
        self._heartbeat_thread.start()

    def stop(self) -> None:
        """Stops heartbeats and the data plane, and releases the device."""
        self._stop.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=5)
        if self._server is not None:
            self._server.stop()
        if self._device is not None:
            self._device.close()

    def heartbeat(self) -> WorkerHeartbeat:
        """Builds the heartbeat describing this worker now."""
        assert self._device is not None, "the runtime is not started"
        return WorkerHeartbeat(
            worker_id=self.settings.worker_id,
            host=self.settings.advertise_host,
            dataplane_url=self.dataplane_url,
            queue=self.settings.queue,
            state=self.state,
            device=self._device.state(),
            sent_at=time.time(),
        )

    def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval_s
        broker_down = False
        while not self._stop.is_set():
            try:
                self._app.send_task(
                    HEARTBEAT_TASK,
                    args=[self.heartbeat().to_message()],
                    queue=self.settings.control_queue,
                    retry=False,
                    # A heartbeat older than a few intervals says nothing true any more.
                    expires=interval * 5,
                )
                if broker_down:
                    log.info("broker reachable again; heartbeats resumed")
                broker_down = False
            except (OperationalError, OSError) as exc:
                # The worker keeps serving what it hosts while the control plane or
                # broker is away; it simply re-registers once heartbeats get through.
                if not broker_down:
                    log.warning("heartbeat not sent, broker unreachable: %s", exc)
                broker_down = True
            except Exception:  # a bug must not silently end heartbeats (the worker would look dead)
                log.exception("heartbeat failed; trying again next interval")
            self._stop.wait(interval)


def make_celery_app(settings: WorkerSettings) -> Celery:
    """Builds the worker's Celery app, with the bootstep that runs ``WorkerRuntime``."""
    # fixups=[]: Celery would otherwise set up Django whenever DJANGO_SETTINGS_MODULE is in
    # the environment (as it is under `make run`); the data plane never runs Django.
    app = Celery("berth-worker", fixups=[])
    app.conf.update(
        broker_url=settings.broker.url,
        broker_transport_options=settings.broker.transport_options,
        result_backend=settings.broker.result_backend,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=True,
    )
    runtime = WorkerRuntime(settings, app)

    class RuntimeStep(bootsteps.StartStopStep):
        requires = ("celery.worker.components:Pool",)

        def start(self, worker: Any) -> None:
            runtime.start()

        def stop(self, worker: Any) -> None:
            runtime.stop()

    app.steps["worker"].add(RuntimeStep)

    @app.task(name="berth.worker.status")
    def status() -> dict[str, Any]:
        """Answers with the heartbeat the worker would send now."""
        return runtime.heartbeat().to_message()

    return app
