"""``make run``: migrate, seed the demo, then run every platform process under honcho.

Processes: the ASGI server (console, REST, WebSockets, the /v2 gateway), a Celery
worker for control tasks, Celery beat, and one inference worker per GPU that NVML finds
(or one on the CPU). honcho prefixes each process's log lines, stops all the others
when one dies (its exit code becomes ours) and stops everything on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import os
import queue
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from honcho.manager import Manager

REPO_ROOT = Path(__file__).resolve().parent.parent


def process_table(
    *,
    python: str,
    host: str,
    port: int,
    gpus: int,
    worker_id: str = "",
    control_queue: str = "control",
    log_level: str = "INFO",
    beat_schedule: str = "celerybeat-schedule",
    control_nice: int = 10,
) -> list[tuple[str, str]]:
    """The platform's processes as (name, shell command) pairs.

    Args:
        python: The interpreter that runs every process.
        host: The address the ASGI server binds.
        port: The ASGI server's port.
        gpus: How many GPUs NVML sees; 0 runs one CPU inference worker.
        worker_id: ``BERTH_WORKER_ID`` when set; suffixed with the device for several GPUs.
        control_queue: The Celery queue of control tasks (``BERTH_CONTROL_QUEUE``).
        log_level: ``BERTH_LOG_LEVEL`` for every process.
        beat_schedule: Where beat keeps its schedule state.
        control_nice: How much lower the CPU priority of the control worker and beat is than
            the serving processes' (``nice``; 0 leaves it equal). On one machine their
            once-a-second bursts (heartbeats, the dead-worker sweep, reconcile passes) would
            otherwise take a core from requests in flight; they tolerate being a few
            milliseconds late.
    """
    py = shlex.quote(python)
    background = f"nice -n {int(control_nice)} " if control_nice > 0 else ""
    level = shlex.quote(log_level.upper())
    queue = shlex.quote(control_queue)
    table = [
        (
            "web",
            f"{py} -m uvicorn control_plane.asgi:application --host {shlex.quote(host)} --port {port}"
            # Under honcho's 5 s grace before SIGKILL.
            f" --no-access-log --lifespan off --timeout-graceful-shutdown 4 --log-level {level.lower()}"
            # httptools with the gateway's shortcut for refusals (apps/gateway/fastpath.py).
            " --http apps.gateway.fastpath:GatewayHttpProtocol",
        ),
        (
            "control",
            f"{background}{py} -m celery -A control_plane worker --queues {queue} --hostname control@%h"
            f" --pool threads --concurrency 4 --without-gossip --without-mingle --without-heartbeat --loglevel {level}",
        ),
        (
            "beat",
            f"{background}{py} -m celery -A control_plane beat --loglevel {level}"
            f" --schedule {shlex.quote(beat_schedule)}",
        ),
    ]
    devices = [f"cuda:{index}" for index in range(gpus)] or ["cpu"]
    for device in devices:
        name = "inference" if device == "cpu" else f"inference-{device.replace(':', '')}"
        command = f"{py} -m inference_workers --device {device}"
        if worker_id and len(devices) > 1:
            command += f" --worker-id {shlex.quote(worker_id + '-' + device.replace(':', ''))}"
        table.append((name, command))
    return table


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class PlatformManager(Manager):
    """honcho's ``Manager``, safe against a signal that arrives while processes start.

    honcho's own signal handler fails (``KeyError: 'pid'``) for a process that has not
    reported its pid yet, and then never stops the others. We defer SIGINT/SIGTERM until
    every process has reported its pid, then hand the first one to honcho.
    """

    def _start(self) -> None:
        deferred: list[int] = []
        previous: dict[int, Any] = {sig: signal.signal(sig, lambda s, f: deferred.append(s)) for sig in STOP_SIGNALS}
        try:
            super()._start()
            self._await_pids()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        for signum in deferred[:1]:
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)

    def _await_pids(self) -> None:
        deadline = time.monotonic() + 60
        while not self._all_started() and time.monotonic() < deadline:
            try:
                message = self.events.get(timeout=0.1)
            except queue.Empty:
                continue
            if message.type == "start":
                self._processes[message.name]["pid"] = message.data["pid"]
                self._system_print(f"{message.name} started (pid={message.data['pid']})\n")
            elif message.type == "line":
                self._printer.write(message)
            elif message.type == "stop":
                self._processes[message.name]["returncode"] = message.data["returncode"]
                self._system_print(f"{message.name} stopped (rc={message.data['returncode']})\n")
                if self.returncode is None:
                    self.returncode: int | None = message.data["returncode"]


def main() -> int:
    """Prepares the database and runs the platform until a signal or a process ends."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "control_plane.settings.base")
    # Every child runs the same interpreter and finds the project's packages.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")

    import django
    from django.core.management import call_command
    from django.db import connections

    django.setup()
    from django.conf import settings
    from honcho.printer import Printer

    from control_plane.settings.env import env
    from inference_workers.devices import gpu_count

    host = env.str("BERTH_HOST", default="127.0.0.1")
    port = env.int("BERTH_PORT", default=8000)
    shown = f"[{host}]" if ":" in host else host
    # Workers fetch artifacts from here (signed URLs); the processes inherit the variable.
    os.environ.setdefault("BERTH_PUBLIC_URL", f"http://{shown}:{port}")
    gpus = gpu_count()

    call_command("migrate", interactive=False, verbosity=0)
    call_command("seed_demo", device_kind="cuda" if gpus else "cpu", base_url=os.environ["BERTH_PUBLIC_URL"])
    connections.close_all()  # honcho forks; children open their own connections
    manager: Any = PlatformManager(Printer(sys.stdout, colour=sys.stdout.isatty()))
    for name, command in process_table(
        python=sys.executable,
        host=host,
        port=port,
        gpus=gpus,
        worker_id=env.str("BERTH_WORKER_ID", default=""),
        control_queue=settings.CELERY_TASK_DEFAULT_QUEUE,
        log_level=env.str("BERTH_LOG_LEVEL", default="INFO"),
        beat_schedule=str(Path(settings.BERTH_DATA_DIR) / "celerybeat-schedule"),
        control_nice=env.int("BERTH_CONTROL_NICE", default=10),
    ):
        # exec: the shell honcho starts becomes the process, so no shell sits between
        # honcho and the program (a signal or a death is the program's own).
        manager.add_process(name, f"exec {command}", cwd=str(REPO_ROOT))
    shown_host = f"[{host}]" if ":" in host else host
    print(f"Berth console: http://{shown_host}:{port}/   (GPUs found: {gpus}; Ctrl-C stops everything)", flush=True)
    manager.loop()
    code = int(manager.returncode or 0)
    if code == 0:
        # Nothing in the platform is meant to exit on its own: a clean exit is a failure too.
        print("a platform process exited on its own; everything was stopped", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
