"""The worker's control channel: its Celery app, the bootstep, commands and heartbeats.

The inference worker is a Celery worker consuming its own queue (``worker.<id>``). A
bootstep starts, in the same process, the device handle, the model host, the data-plane
HTTP server on its own event-loop thread, and a thread that sends a heartbeat to the
control plane every few seconds. Commands (load, unload, drain, status) are idempotent
tasks, acknowledged late so a worker killed mid-command gets it again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from celery import Celery, bootsteps
from celery.signals import worker_shutting_down
from kombu.exceptions import OperationalError

from inference_workers.artifacts import ArtifactCache
from inference_workers.dataplane import DataPlane
from inference_workers.devices import Device, NvmlDevice, open_device
from inference_workers.errors import LoadError
from inference_workers.host import ModelHost
from inference_workers.loop import EventLoopThread
from inference_workers.metrics import WorkerMetrics
from inference_workers.runtimes import RuntimeOptions
from inference_workers.runtimes.base import prime_runtime, release_freed_memory
from inference_workers.server import DataPlaneServer, build_app
from inference_workers.settings import WorkerSettings
from inference_workers.types import (
    DRAIN_TASK,
    HEARTBEAT_TASK,
    LOAD_TASK,
    SERVING_TASK,
    STATUS_TASK,
    UNLOAD_TASK,
    LoadCommand,
    MessageError,
    ModelKey,
    WorkerHeartbeat,
    WorkerState,
)

log = logging.getLogger(__name__)


async def _cuda_primed_on_loop(index: int) -> None:
    """Makes the event loop thread's cuBLAS handle (fast models' batches run on the loop)."""
    from inference_workers.runtimes.gpu import prime_cuda

    prime_cuda(index)


class WorkerRuntime:
    """Everything the worker runs beside its Celery consumer."""

    def __init__(self, settings: WorkerSettings, app: Celery) -> None:
        self.settings = settings
        self._app = app
        self.device: Device | None = None
        self.host: ModelHost | None = None
        self.metrics = WorkerMetrics()
        self._loop: EventLoopThread | None = None
        self._server: DataPlaneServer | None = None
        self._stop = threading.Event()
        self._beat_soon = threading.Event()  # a load ended: the control plane hears it now
        self._heartbeat_thread: threading.Thread | None = None
        self.state: WorkerState = "ready"
        self.draining_for_exit = False
        self._dataplane: DataPlane | None = None

    @property
    def dataplane_url(self) -> str:
        """The base URL the gateway reaches this worker's data plane on."""
        port = self._server.port if self._server else 0
        host = self.settings.advertise_host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    def start(self) -> None:
        """Opens the device, starts the host and the data plane, and begins heartbeats."""
        settings = self.settings
        self.device = open_device(
            settings.device,
            memory_budget_bytes=settings.memory_budget_bytes,
            gpu_budget_bytes=settings.gpu_memory_budget_bytes,
        )
        self._loop = EventLoopThread().start()
        self.host = ModelHost(
            device=self.device,
            options=RuntimeOptions(
                device=settings.device,
                intra_op_threads=settings.intra_op_threads,
                inter_op_threads=settings.inter_op_threads,
                spin_wait=settings.spin_wait,
            ),
            cache=ArtifactCache(settings.data_dir / "artifact-cache", max_bytes=settings.max_artifact_bytes),
            loop=self._loop,
            metrics=self.metrics,
            headroom_bytes=settings.headroom_bytes,
        )
        dataplane = self._dataplane = DataPlane(self.host, is_draining=lambda: self.draining_for_exit)
        app = build_app(
            dataplane,
            token=settings.token,
            max_body_bytes=settings.max_body_bytes,
            metrics=self.metrics,
            access_log=settings.access_log,
        )
        self._server = DataPlaneServer(app, host=settings.bind_host, port=settings.port, loop=self._loop)
        self._server.start()
        if self.host.options.cuda_index is not None:
            # The CUDA context and cuBLAS (hundreds of MiB, a second or so) now, not in the
            # first load: a worker taking over a dead one's replicas is ready sooner.
            prime_runtime("torch_export", self.host.options)
            self._loop.run(_cuda_primed_on_loop(self.host.options.cuda_index))  # fast models run there
            if isinstance(self.device, NvmlDevice):
                # That is the worker's own from now on, never a model's: off what it offers.
                own = self.device.own_use_fix()
                self.host.capacity_recount()
                log.info(
                    "CUDA primed: the worker holds %d MiB of %s itself; it offers models %d MiB",
                    own // 2**20,
                    settings.device,
                    self.host.capacity_bytes // 2**20,
                )
        release_freed_memory()  # freezes what the imports made, before any request
        log.info("worker %s serving on %s", settings.worker_id, self.dataplane_url)
        self._heartbeat_thread = threading.Thread(target=self._heartbeat_loop, name="berth-heartbeat", daemon=True)
        self._heartbeat_thread.start()

    def begin_drain(self) -> None:
        """From now on new inference gets 503; what is in flight carries on."""
        self.draining_for_exit = True
        self.state = "draining"

    def begin_handover(self) -> None:
        """SIGTERM arrived: report draining (the control plane moves the replicas) and keep
        serving until the hand-over in ``stop`` ends; without a hand-over, drain at once."""
        if self.settings.handover_seconds > 0:
            self.state = "draining"
        else:
            self.begin_drain()

    def _hand_over(self) -> None:
        """Keeps serving while the control plane places this worker's replicas elsewhere.

        The control plane, told by a ``draining`` heartbeat, loads a replacement for each
        replica here; each one here stays in routing until its replacement is ready, then
        leaves it. The worker asks the control plane how many of its replicas are still
        routed to (``SERVING_TASK``) and keeps serving while any is; once none is, it waits
        for a quiet second (gateways re-read their tables within it). If the control plane
        does not answer (it is stopping too, as under ``make run``), the quiet second alone
        ends the hand-over. ``BERTH_WORKER_HANDOVER_S`` bounds it all; with no broker to
        report draining to, there is no hand-over.
        """
        host, dataplane = self.host, self._dataplane
        if host is None or dataplane is None or self.draining_for_exit or self.settings.handover_seconds <= 0:
            return
        if not host.states():
            return
        self.state = "draining"
        try:
            self._send_heartbeat()
        except (OperationalError, OSError) as exc:
            log.warning("cannot tell the control plane this worker is leaving (%s); draining at once", exc)
            return
        started = time.monotonic()
        deadline = started + self.settings.handover_seconds
        log.info("handing over: serving until the replicas here have moved (at most %.0f s)", deadline - started)
        said: int | None = -1
        while time.monotonic() < deadline and host.states():
            serving = self._still_routed()
            if serving != said:
                log.info("the control plane says %s of the replicas here still serve", serving)
                said = serving
            quiet = time.monotonic() - max(dataplane.last_infer_at, started)
            if serving == 0 or serving is None:
                if quiet >= HANDOVER_QUIET_S and host.inflight == 0:
                    break
                time.sleep(0.05)
            else:
                time.sleep(0.25)
        log.info("hand-over ended after %.1f s", time.monotonic() - started)

    def _still_routed(self) -> int | None:
        """The control plane's count of this worker's replicas still in routing (None: no answer)."""
        try:
            result = self._app.send_task(
                SERVING_TASK, args=[self.settings.worker_id], queue=self.settings.control_queue, expires=5
            )
            # Not inside a task: Celery's guard against waiting on tasks from tasks does not apply.
            answer = result.get(timeout=HANDOVER_ASK_TIMEOUT_S, interval=0.05, disable_sync_subtasks=False)
            return int(answer)
        except Exception as exc:  # noqa: BLE001 - no answer is an answer: fall back to the quiet second
            log.info("the control plane did not say whether the replicas moved: %r", exc)
            return None

    def stop(self) -> None:
        """Hands over (see ``_hand_over``), drains (in-flight requests finish, new ones get
        503), then stops everything."""
        self._hand_over()
        self.begin_drain()
        if self.host is not None:
            with contextlib.suppress(OperationalError, OSError):  # the broker may be down: drain anyway
                self._send_heartbeat()
            if not self.host.wait_idle(self.settings.drain_seconds):
                log.warning("drain timed out with %d requests in flight", self.host.inflight)
        self._stop.set()
        self._beat_soon.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=5)
        if self._server is not None:
            self._server.stop()
        if self.host is not None:
            self.host.close()
        if self._loop is not None:
            self._loop.stop()
        if self.device is not None:
            self.device.close()

    def heartbeat(self, *, windows: bool = False) -> WorkerHeartbeat:
        """Builds the heartbeat describing this worker now (``windows``: taking the models'
        batch windows, which only the heartbeat sent to the control plane does)."""
        assert self.device is not None and self.host is not None, "the runtime is not started"
        device = self.device.state()
        self.metrics.device_used_bytes.set(device.used_bytes)
        self.metrics.device_total_bytes.set(device.total_bytes)
        return WorkerHeartbeat(
            worker_id=self.settings.worker_id,
            host=self.settings.advertise_host,
            dataplane_url=self.dataplane_url,
            queue=self.settings.queue,
            state=self.state,
            device=device,
            sent_at=time.time(),
            models=tuple(self.host.states(windows=windows)),
        )

    def _send_heartbeat(self) -> None:
        # A connection per heartbeat (cheap every 2 s): after a broker restart the next one
        # dials afresh instead of reusing a dead pooled socket.
        heartbeat = self.heartbeat(windows=True)
        try:
            with self._app.connection_for_write() as connection:
                self._app.send_task(
                    HEARTBEAT_TASK,
                    args=[heartbeat.to_message()],
                    queue=self.settings.control_queue,
                    retry=False,
                    connection=connection,
                    # Stale state is ignored by the control plane, but the batch windows a
                    # heartbeat carries count however late it arrives; only one left waiting
                    # past this long (a control plane gone for good) is dropped.
                    expires=max(self.settings.heartbeat_interval_s * 5, HEARTBEAT_EXPIRES_S),
                )
        except BaseException:
            if self.host is not None:
                self.host.put_back_windows(heartbeat.models)  # not sent: the next heartbeat carries them
            raise

    def _heartbeat_loop(self) -> None:
        broker_down = False
        while not self._stop.is_set():
            try:
                self._send_heartbeat()
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
            self._beat_soon.wait(self.settings.heartbeat_interval_s)
            self._beat_soon.clear()

    def beat_soon(self) -> None:
        """Sends the next heartbeat now rather than at the interval (a load has ended: the
        control plane routes to a ready replica, or retries a failed one, a beat sooner)."""
        self._beat_soon.set()


HEARTBEAT_EXPIRES_S = 600.0
# No inference for this long during a hand-over: the gateways route elsewhere now.
HANDOVER_QUIET_S = 1.0
HANDOVER_ASK_TIMEOUT_S = 1.0


def make_celery_app(settings: WorkerSettings) -> Celery:
    """Builds the worker's Celery app, its command tasks, and the bootstep."""
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
        # A load under way when the broker goes away runs to its end (redis_broker.py);
        # Celery 6 would cancel it by default.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue,
        broker_connection_retry_on_startup=True,
        # Never give up on the broker: Celery's default (100 tries, about 45 min with its
        # backoff) would end the process, data plane and all, in a long broker outage.
        broker_connection_max_retries=None,
        worker_hijack_root_logger=True,
        result_expires=3600,
    )
    runtime = WorkerRuntime(settings, app)
    app.berth_runtime = runtime  # type: ignore[attr-defined]

    class RuntimeStep(bootsteps.StartStopStep):
        requires = ("celery.worker.components:Pool",)

        def start(self, worker: Any) -> None:
            runtime.start()

        def stop(self, worker: Any) -> None:
            runtime.stop()

    app.steps["worker"].add(RuntimeStep)

    @worker_shutting_down.connect(weak=False)
    def drain_on_shutdown(**kwargs: Any) -> None:
        # Sent as SIGTERM arrives, well before the bootstep is stopped: report draining now
        # (the hand-over keeps serving meanwhile), or refuse new work at once without one.
        runtime.begin_handover()

    def host() -> ModelHost:
        assert runtime.host is not None, "the worker runtime is not started"
        return runtime.host

    @app.task(name=LOAD_TASK)
    def load(message: dict[str, Any]) -> dict[str, Any]:
        """Loads a model version; the result (and later heartbeats) say ready or why not."""
        try:
            command = LoadCommand.from_message(message)
        except MessageError as exc:
            return {"state": "failed", "reason": f"malformed load command: {exc}"}
        try:
            return host().load(command).__dict__ | {"key": command.key.__dict__}
        except LoadError as exc:
            log.warning("load of %s failed: %s", command.key, exc)
            return {"key": command.key.__dict__, "state": "failed", "reason": str(exc)}
        finally:
            runtime.beat_soon()

    @app.task(name=UNLOAD_TASK)
    def unload(message: dict[str, Any]) -> dict[str, Any]:
        """Unloads a model version; unloading one that is not hosted succeeds too."""
        try:
            key = ModelKey.from_message(message)
        except MessageError as exc:
            return {"unloaded": False, "reason": f"malformed unload command: {exc}"}
        return {"key": key.__dict__, "unloaded": host().unload(key)}

    @app.task(name=DRAIN_TASK)
    def drain() -> dict[str, Any]:
        """Marks the worker draining: the control plane moves its replicas, it keeps serving."""
        runtime.state = "draining"
        return {"worker_id": settings.worker_id, "state": runtime.state}

    @app.task(name=STATUS_TASK)
    def status() -> dict[str, Any]:
        """Answers with the heartbeat the worker would send now."""
        return runtime.heartbeat().to_message()

    return app
