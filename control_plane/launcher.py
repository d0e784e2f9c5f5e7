"""``make run``: migrate, seed the demo, then run every platform process under honcho.

Processes: the ASGI server (console, REST, WebSockets, the /v2 gateway), a Celery
worker for control tasks, Celery beat, and one inference worker per GPU that NVML finds
(or one on the CPU). honcho prefixes each process's log lines, stops all the others
when one dies (its exit code becomes ours) and stops everything on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def process_table(*, python: str, host: str, port: int, gpus: int, worker_id: str = "") -> list[tuple[str, str]]:
    """The platform's processes as (name, shell command) pairs.

    Args:
        python: The interpreter that runs every process.
        host: The address the ASGI server binds.
        port: The ASGI server's port.
        gpus: How many GPUs NVML sees; 0 runs one CPU inference worker.
        worker_id: ``BERTH_WORKER_ID`` when set; suffixed with the device for several GPUs.
    """
    py = shlex.quote(python)
    table = [
        (
            "web",
            f"{py} -m uvicorn control_plane.asgi:application --host {shlex.quote(host)} --port {port}"
            " --no-access-log --lifespan off --timeout-graceful-shutdown 10",
        ),
        (
            "control",
            f"{py} -m celery -A control_plane worker --queues control --hostname control@%h"
            " --pool threads --concurrency 4 --without-gossip --without-mingle --without-heartbeat --loglevel INFO",
        ),
        ("beat", f"{py} -m celery -A control_plane beat --loglevel INFO --schedule {_beat_schedule()}"),
    ]
    devices = [f"cuda:{index}" for index in range(gpus)] or ["cpu"]
    for device in devices:
        name = "inference" if device == "cpu" else f"inference-{device.replace(':', '')}"
        command = f"{py} -m inference_workers --device {device}"
        if worker_id and len(devices) > 1:
            command += f" --worker-id {shlex.quote(worker_id + '-' + device.replace(':', ''))}"
        table.append((name, command))
    return table


def _beat_schedule() -> str:
    from django.conf import settings

    return shlex.quote(str(Path(settings.BERTH_DATA_DIR) / "celerybeat-schedule"))


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
    from honcho.manager import Manager
    from honcho.printer import Printer

    from control_plane.settings.env import env
    from inference_workers.devices import gpu_count

    call_command("migrate", interactive=False, verbosity=0)
    call_command("seed_demo")
    connections.close_all()  # honcho forks; children open their own connections

    host = env.str("BERTH_HOST", default="127.0.0.1")
    port = env.int("BERTH_PORT", default=8000)
    gpus = gpu_count()
    manager = Manager(Printer(sys.stdout, colour=sys.stdout.isatty()))
    for name, command in process_table(
        python=sys.executable, host=host, port=port, gpus=gpus, worker_id=env.str("BERTH_WORKER_ID", default="")
    ):
        # exec: the shell honcho starts becomes the process, so no shell sits between
        # honcho and the program (a signal or a death is the program's own).
        manager.add_process(name, f"exec {command}", cwd=str(REPO_ROOT))
    shown_host = f"[{host}]" if ":" in host else host
    print(f"Berth console: http://{shown_host}:{port}/   (GPUs found: {gpus}; Ctrl-C stops everything)", flush=True)
    manager.loop()
    return int(manager.returncode or 0)


if __name__ == "__main__":
    sys.exit(main())
